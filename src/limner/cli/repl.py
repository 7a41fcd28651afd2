"""The interactive REPL of `limner run`, with Ollama's commands and messages.

Each turn sends the whole conversation to /api/chat, pictures included (as Ollama does
since v0.4). With a drawing model, `DrawRepl` draws each prompt into a PNG instead, with
`/set width 512`-style settings. Input comes from the standard library's `input()`, with
`readline` for line editing and history where it exists.
"""

from __future__ import annotations

import base64
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from limner.cli.session import (
    Session,
    Spinner,
    attach_pictures,
    print_stream,
    print_timings,
    waiting_for,
)

if TYPE_CHECKING:
    from limner.cli.draw import DrawSettings
    from limner.client import Client
    from limner.types import ShowResponse

try:
    import readline
except ImportError:  # Windows without pyreadline: plain input() still works
    readline = None  # type: ignore[assignment]

HELP = '''Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /list           List models
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use """ to begin a multi-line message.
Name a picture to include it: cat.png, ./a.jpg, ~/b.webp, /c/d.jpeg (.png .jpg .jpeg .webp).
'''

HELP_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
"""

HELP_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""

HELP_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
   Alt + b            Move back (left) one word
   Alt + f            Move forward (right) one word
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor

  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit limner (/bye)
"""

HELP_PARAMETERS = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter stop <string> <string> ...   Set the stop parameters
"""

HELP_TOPICS = {
    "set": HELP_SET,
    "show": HELP_SHOW,
    "shortcut": HELP_SHORTCUTS,
    "shortcuts": HELP_SHORTCUTS,
}

# Ollama's options and their types (api.Options); `stop` is a list that accumulates.
INTS = "num_ctx num_batch num_gpu main_gpu num_thread num_keep seed num_predict top_k repeat_last_n"
FLOATS = "top_p min_p typical_p temperature repeat_penalty presence_penalty frequency_penalty"
PARAMETER_TYPES: dict[str, type] = {
    **dict.fromkeys(INTS.split(), int),
    **dict.fromkeys(FLOATS.split(), float),
    "use_mmap": bool,
    "stop": list,
}
TRUE, FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")
MODES = {
    "verbose": ("verbose", True), "quiet": ("verbose", False),
    "wordwrap": ("wordwrap", True), "nowordwrap": ("wordwrap", False),
    "history": ("history", True), "nohistory": ("history", False),
}  # fmt: skip


def parse_parameter(name: str, values: list[str]) -> Any:
    """A typed value, as Ollama's api.FormatParams parses it; ValueError explains a refusal."""
    kind = PARAMETER_TYPES.get(name)
    if kind is None:
        raise ValueError(f"unknown parameter '{name}'")
    if kind is list:
        return values
    text = values[0]
    if kind is bool:
        if text not in TRUE + FALSE:
            raise ValueError(f"invalid bool value [{text}]")
        return text in TRUE
    try:
        return int(text) if kind is int else float(text)
    except ValueError:
        raise ValueError(f"invalid {kind.__name__} value [{text}]") from None


class Repl:
    def __init__(self, sdk: Client, session: Session, info: ShowResponse) -> None:
        self.sdk = sdk
        self.session = session
        self.info = info

    # --- the loop ---

    def loop(self) -> int:
        from limner.errors import LimnerError

        loading = Spinner(f"loading {self.session.model}")
        try:
            self.sdk.generate(self.session.model, keep_alive=self.session.keep_alive)
        finally:
            loading.stop()
        self._replay_stored_messages()
        while True:
            try:
                text = self._read()
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:
                self._interrupted_at_prompt()
                continue
            try:
                if not self._handle(text):
                    return 0
            except KeyboardInterrupt:
                print()
            except LimnerError as error:
                print(f"Error: {error}", file=sys.stderr)

    def _read(self) -> str:
        line = input(">>> ")
        if line.startswith('"""'):
            return self._read_multiline(line[3:])
        return line

    def _read_multiline(self, first: str) -> str:
        """Lines up to and including one that ends with \"\"\" (cut off), joined by newlines."""
        lines: list[str] = []
        line = first
        while True:
            text, closed = _cut_suffix(line, '"""')
            if text or lines:
                lines.append(text)
            if closed:
                return "\n".join(lines)
            line = input("... ")

    def _interrupted_at_prompt(self) -> None:
        pending = readline.get_line_buffer() if readline is not None else ""
        print()
        if not pending:
            print("Use Ctrl + d or /bye to exit.")

    def _handle(self, text: str) -> bool:
        """Run one command or ask one question; False ends the REPL."""
        if text.startswith("/") and not self._starts_with_picture(text):
            return self._command(text)
        if text.strip():
            self._ask(text)
        return True

    def _starts_with_picture(self, text: str) -> bool:
        from limner.cli.pictures import EXTENSIONS

        first = text.split(maxsplit=1)[0]
        return self.session.vision and re.search(EXTENSIONS + "$", first, re.IGNORECASE) is not None

    def _replay_stored_messages(self) -> None:
        """A model's stored MESSAGEs start the conversation, as `ollama run` shows them."""
        for message in self.info.messages or []:
            role, content = message.get("role", ""), message.get("content", "")
            if role == "user":
                print(f">>> {content}")
            elif role == "assistant":
                print(f"{content}\n")
            self.session.messages.append({"role": role, "content": content})

    # --- a question ---

    def _ask(self, text: str) -> None:
        from limner.errors import LimnerError

        s = self.session
        try:
            message = self._user_message(text)
        except LimnerError as error:
            print(f"Error: {error}", file=sys.stderr)
            return
        s.messages.append(message)
        pieces: list[str] = []
        chunks = self.sdk.chat(s.model, s.messages, format=s.format, options=s.parameters or None,
                               keep_alive=s.keep_alive, stream=True)  # fmt: skip

        def text_of(chunk: Any) -> str:
            pieces.append(chunk.message.content)
            return str(chunk.message.content)

        try:
            final = print_stream(chunks, text_of, s.wordwrap, waiting_for(self.sdk, s.model))
        except (KeyboardInterrupt, LimnerError) as stopped:
            # An unanswered question stays out of the conversation.
            s.messages.pop()
            print()
            if isinstance(stopped, LimnerError):
                print(f"Error: {stopped}", file=sys.stderr)
            return
        s.messages.append({"role": "assistant", "content": "".join(pieces)})
        print("\n", flush=True)
        if s.verbose and final is not None:
            print_timings(final, sys.stderr)

    def _user_message(self, text: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "user", "content": text}
        if self.session.vision:
            message["content"], images = attach_pictures(text)
            if images:
                message["images"] = images
        return message

    # --- commands ---

    def _command(self, line: str) -> bool:
        words = line.split()
        name, args = words[0], words[1:]
        if name in ("/bye", "/exit"):
            return False
        handlers: dict[str, Callable[[], None]] = {
            "/set": lambda: self._set(line, args), "/show": lambda: self._show(args),
            "/load": lambda: self._load(args), "/save": lambda: self._save(args),
            "/clear": self._clear, "/list": self._list,
            "/?": lambda: self._help(args), "/help": lambda: self._help(args),
        }  # fmt: skip
        handler = handlers.get(name)
        if handler is None:
            print(f"Unknown command '{name}'. Type /? for help")
        else:
            handler()
        return True

    def _help(self, args: list[str]) -> None:
        topic = args[0] if args else ""
        print(HELP_TOPICS.get(topic, HELP))

    def _set(self, line: str, args: list[str]) -> None:
        if not args:
            print(HELP_SET)
        elif args[0] == "parameter":
            self._set_parameter(args[1:])
        elif args[0] == "system":
            self._set_system(line.split(None, 2)[2] if len(args) > 1 else "")
        elif args[0] in MODES:
            self._set_mode(args[0])
        elif args[0] == "format":
            if args[1:] == ["json"]:
                self.session.format = "json"
                print("Set format to 'json' mode.")
            else:
                print("Invalid or missing format. For 'json' mode use '/set format json'")
        elif args[0] == "noformat":
            self.session.format = None
            print("Disabled format.")
        else:
            print(f"Unknown command '/set {args[0]}'. Type /? for help")

    def _set_parameter(self, args: list[str]) -> None:
        if len(args) < 2:
            print(HELP_PARAMETERS)
            return
        name, values = args[0], args[1:]
        try:
            value = parse_parameter(name, values)
        except ValueError as error:
            print(f'Couldn\'t set parameter: "{error}"')
            return
        if name == "stop":
            value = [*self.session.parameters.get("stop", []), *value]
        self.session.parameters[name] = value
        print(f"Set parameter '{name}' to '{', '.join(values)}'")

    def _set_system(self, text: str) -> None:
        if not text:
            print(HELP_SET)
            return
        if text.startswith('"""'):
            text = self._read_multiline(text[3:])
        s = self.session
        s.system = text
        message = {"role": "system", "content": text}
        if s.messages and s.messages[-1]["role"] == "system":
            s.messages[-1] = message
        else:
            s.messages.append(message)
        print("Set system message.")

    def _set_mode(self, mode: str) -> None:
        attribute, on = MODES[mode]
        if attribute == "history":
            if readline is not None:
                readline.set_auto_history(on)
        else:
            setattr(self.session, attribute, on)
        print(f"Set '{mode}' mode.")

    def _show(self, args: list[str]) -> None:
        from limner.cli.formats import format_show, show_field

        if len(args) != 1:
            print(HELP_SHOW)
            return
        info = self.sdk.show(self.session.model)
        if args[0] == "info":
            print(format_show(info))
        elif args[0] == "parameters":
            self._show_parameters(info)
        elif args[0] == "system":
            system = self.session.system or info.system
            print((system or "No system message was specified for this model.") + "\n")
        elif args[0] in ("license", "modelfile", "template"):
            print(show_field(info, args[0]))
        else:
            print(f"Unknown command '/show {args[0]}'. Type /? for help")

    def _show_parameters(self, info: ShowResponse) -> None:
        print("Model defined parameters:")
        lines = (info.parameters or "").splitlines()
        lines = lines or ["No additional parameters were specified for this model."]
        print("\n".join(f"  {line}" for line in lines) + "\n")
        if self.session.parameters:
            print("User defined parameters:")
            for key, value in self.session.parameters.items():
                print(f"  {key:<30} {value}")
            print()

    def _load(self, args: list[str]) -> None:
        from limner.errors import NotFound

        if len(args) != 1:
            print("Usage:\n  /load <modelname>")
            return
        print(f"Loading model '{args[0]}'")
        try:
            info = self.sdk.show(args[0])
        except NotFound:
            print(f"Couldn't find model '{args[0]}'")
            return
        if "image" in info.capabilities:  # its REPL is another one (DrawRepl)
            print(f"'{args[0]}' draws pictures; leave with /bye and run: limner run {args[0]}")
            return
        self.sdk.generate(args[0], keep_alive=self.session.keep_alive)
        self.session.model, self.info = args[0], info
        self.session.vision = "vision" in info.capabilities
        self.session.messages = []
        self._replay_stored_messages()

    def _save(self, args: list[str]) -> None:
        from limner.errors import InvalidRequest

        if len(args) != 1:
            print("Usage:\n  /save <modelname>")
            return
        s = self.session
        messages = [_saved(m) for m in s.messages if m["role"] != "system"]
        try:
            self.sdk.create(args[0], from_=s.model, system=s.system, parameters=s.parameters or None,
                            messages=messages or None)  # fmt: skip
        except InvalidRequest as error:
            print(f"error: {error}")
            return
        print(f"Created new model '{args[0]}'")

    def _clear(self) -> None:
        s = self.session
        s.messages = [{"role": "system", "content": s.system}] if s.system else []
        print("Cleared session context")

    def _list(self) -> None:
        import argparse

        from limner.cli.models import list_models

        list_models(argparse.Namespace(prefix=""))


def _saved(message: dict[str, Any]) -> dict[str, Any]:
    """A history message as /api/create takes it: pictures as base64."""
    images = message.get("images")
    if not images:
        return {"role": message["role"], "content": message["content"]}
    return {**message, "images": [base64.b64encode(i).decode() for i in images]}


def _cut_suffix(text: str, suffix: str) -> tuple[str, bool]:
    return (text[: -len(suffix)], True) if text.endswith(suffix) else (text, False)


# --- drawing models -------------------------------------------------------------------------

HELP_DRAW = '''Available Commands:
  /set            Set drawing settings (width, height, steps, seed, ...)
  /show           Show the drawing settings
  /show info      Show details for this model
  /list           List models
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Type a prompt to draw it; the PNG is saved in the current folder.
Name a picture in the prompt to redraw it: a watercolor of cat.png (.png .jpg .jpeg .webp).
Use """ to begin a multi-line prompt.
'''

HELP_SET_DRAW = """Available Settings:
  /set width <int>              Picture width in pixels (a multiple of 8)
  /set height <int>             Picture height in pixels (a multiple of 8)
  /set steps <int>              Denoising steps (1-150; default 20)
  /set seed <int>               Random seed, for the same picture again (-1: random)
  /set negative <text>          What the picture should not show
  /set guidance <float>         How closely to follow the prompt (default 7.5)
  /set scheduler <name>         Sampler: euler, euler a, dpm++ 2m karras, ddim, lcm, ...
  /set strength <float>         How much of a picture to change (0-1; default 0.75)
  /set image <path>             A picture to redraw with every prompt
  /set mask <path>              Inpaint that picture: white repaints, black keeps
  /set style <path>             Add a style picture to follow
  /set style-strength <float>   How strongly the style pictures count (0-1; default 0.6)
  /set vae tiny                 Decode with the model's tiny autoencoder (TAESD): faster
  /set verbose, /set quiet      Show timings after each picture, or not
  /set <name>                   Back to the default (style: no style pictures)
"""

HELP_SHOW_DRAW = """Available Commands:
  /show              Show the drawing settings
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
"""


class DrawRepl(Repl):
    """The REPL of a drawing model: each prompt draws one PNG; /set changes the settings."""

    def __init__(
        self, sdk: Client, session: Session, info: ShowResponse, settings: DrawSettings,
        output: str | None,
    ) -> None:  # fmt: skip
        super().__init__(sdk, session, info)
        self.settings = settings
        self.output = output
        # Picture paths in prompts are pictures to redraw, so `/home/me/a.png as ink` is a
        # prompt and not an unknown command (Repl._starts_with_picture asks `vision`).
        session.vision = True

    def _ask(self, text: str) -> None:
        from pathlib import Path

        from limner.cli.draw import (
            draw_and_save,
            print_draw_timings,
            report_saved,
            take_pictures,
        )

        prompt, init = take_pictures(text, self.settings.image)
        if not prompt:
            print("Type what to draw after the picture: a watercolor of cat.png")
            return
        target = Path(self.output).expanduser() if self.output else None
        try:
            saved, image, bar = draw_and_save(
                self.sdk, self.session, self.settings, prompt, init, target, replace=False
            )
        except KeyboardInterrupt:  # the stream is closed by now: the server stops drawing
            print("stopped; nothing was saved", file=sys.stderr)
            return
        report_saved(saved, image, self.session.verbose)
        if self.session.verbose:
            print_draw_timings(bar, sys.stderr)

    def _command(self, line: str) -> bool:
        words = line.split()
        name, args = words[0], words[1:]
        if name in ("/bye", "/exit"):
            return False
        if name == "/set":
            self._set(line, args)
        elif name == "/show":
            self._show(args)
        elif name == "/list":
            self._list()
        elif name in ("/?", "/help"):
            topics = {"set": HELP_SET_DRAW, "show": HELP_SHOW_DRAW}
            print({**HELP_TOPICS, **topics}.get(args[0] if args else "", HELP_DRAW))
        else:
            print(f"Unknown command '{name}'. Type /? for help")
        return True

    def _set(self, line: str, args: list[str]) -> None:
        if not args:
            print(HELP_SET_DRAW)
            return
        if args[0] in MODES:
            self._set_mode(args[0])
            return
        if args[0] == "parameter" and len(args) > 1:  # the chat REPL's habit: /set parameter seed 1
            line = "/set " + line.split(None, 2)[2]
        words = line.split(None, 2)  # the value is the rest of the line: prompts have spaces
        name, value = words[1], words[2].strip() if len(words) > 2 else ""
        try:
            if value:
                self.settings.set(name, value)
                print(f"Set '{name}' to '{value}'")
            else:
                self.settings.reset(name)
                print(f"Set '{name}' to the default")
        except ValueError as error:
            print(f"Couldn't set '{name}': {error}. Type /? set for help")

    def _show(self, args: list[str]) -> None:
        if args and args != ["settings"]:
            super()._show(args)
            return
        print(f"Drawing settings for '{self.session.model}':")
        for name, value in self.settings.rows(self.info.model_info):
            print(f"  {name:<16} {value}")
        print()
