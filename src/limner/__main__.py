from limner.cli import main

main()
