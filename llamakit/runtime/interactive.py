"""`llamakit run -i` / `-cnv`: llama-cli's interactive loop (examples/main/main.cpp) over the completion core.

Conversation mode (-cnv; the default on a terminal when the model has a chat template): each turn renders the
whole conversation with the chat template and the core's prefix reuse evaluates only the new turn. Plain
interactive mode (-i): a running transcript; generation stops at a reverse prompt (-r "User:"), the user's line
(with --in-prefix / --in-suffix) is appended, and so on. At an end-of-generation token the first reverse prompt
is injected, as llama-cli does.

Input: `> ` marks the prompt in conversation mode; a line ending in `\\` continues on the next line; Ctrl-C stops
the answer being generated and returns to the prompt; Ctrl-D (or Ctrl-C at the prompt) or `/exit` ends.
Commands: `/save FILE`, `/load FILE` (a session: runtime/session.py), `/clear`, `/help`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import LlamakitError
from .completion import Completer, Request, reverse_prompt_hit
from .sampling import SamplingParams
from .session import capture, read_for, restore, write_session

HELP = "commands: /save FILE, /load FILE, /clear, /exit; end a line with \\ to continue it; Ctrl-C stops an answer"


@dataclass
class ChatOptions:
    conversation: bool
    prompt: str = ""  # conversation: the first user message; plain: the starting text
    system_prompt: str = ""
    template: str | None = None  # Jinja source (None: the model's, else ChatML)
    reverse_prompts: tuple[str, ...] = ()
    in_prefix: str = ""
    in_suffix: str = ""
    n_predict: int = -1  # per answer
    sampling: SamplingParams = SamplingParams()
    special: bool = False
    display_prompt: bool = True
    context_shift: bool = True
    n_keep: int = 0
    logit_bias: dict[int, float] | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)


class Interactive:
    """The loop; `read(marker)` returns a line (without newline) or None at end of input, and may raise
    KeyboardInterrupt; `write` prints generated text; `log` diagnostics."""

    def __init__(self, comp: Completer, opts: ChatOptions, model_id: Callable[[], str],
                 read: Callable[[str], str | None], write: Callable[[str], None], log: Callable[[str], None]
                 ) -> None:
        self.comp, self.opts, self.model_id = comp, opts, model_id
        self.read, self.write, self.log = read, write, log
        tok = comp.tok
        self.messages: list[dict[str, Any]] = list(opts.messages)
        if opts.conversation and opts.system_prompt and not self.messages:
            self.messages.append({"role": "system", "content": opts.system_prompt})
        self.history: list[int] = [] if opts.conversation else comp.encode_prompt(opts.prompt)
        if not opts.conversation and opts.display_prompt:
            self.write(tok.detokenize(self.history, special=opts.special).decode("utf-8", "replace"))
        self.turns = 0

    # ----------------------------------------------------------------------------------- prompts
    def _prompt_tokens(self) -> list[int]:
        if not self.opts.conversation:
            return self.history
        text = self.comp.tok.apply_chat_template(self.messages, add_generation_prompt=True,
                                                 template=self.opts.template)
        return self.comp.tok.encode(text, add_special=True, parse_special=True)

    def _waiting_at_reverse_prompt(self) -> bool:
        """llama-cli checks the reverse prompts after the prompt too: a transcript ending in "User:" waits."""
        if not self.opts.reverse_prompts or not self.history:
            return False
        tok = self.comp.tok
        tail = "".join(tok.token_to_piece(t, True).decode("utf-8", "replace") for t in self.history[-32:])
        return reverse_prompt_hit(tail, self.opts.reverse_prompts) is not None

    # ----------------------------------------------------------------------------------- one answer
    def answer(self) -> str:
        o, comp = self.opts, self.comp
        req = Request(self._prompt_tokens(), max_tokens=o.n_predict, sampling=o.sampling,
                      reverse_prompts=() if o.conversation else o.reverse_prompts, special=o.special,
                      context_shift=o.context_shift, n_keep=o.n_keep, logit_bias=o.logit_bias,
                      ignore_eos=o.logit_bias is not None)
        stream = comp.stream(req)
        try:
            for piece in stream:
                self.write(piece)
        except KeyboardInterrupt:
            stream.close()
        res = stream.result
        self.turns += 1
        if res.stop_reason == "interrupted":
            self.write("\n")
        if o.conversation:
            self.messages.append({"role": "assistant", "content": res.text})
            return res.text
        gen = list(res.tokens)
        if res.stop_reason == "eog":
            gen = gen[:-1]
        self.history = list(req.tokens) + gen
        if res.stop_reason == "eog" and o.reverse_prompts:  # llama-cli injects the first reverse prompt
            rp = o.reverse_prompts[0]
            self.write(rp)
            self.history += comp.tok.encode(rp, add_special=False, parse_special=True)
        return res.text

    # ----------------------------------------------------------------------------------- input
    def read_input(self) -> str | None:
        """One user input (continued over lines ending in a backslash); None at the end."""
        lines: list[str] = []
        marker = "> " if self.opts.conversation else ""
        while True:
            line = self.read(marker if not lines else "")
            if line is None:
                return None if not lines else "\n".join(lines)
            if line.endswith("\\"):
                lines.append(line[:-1])
                continue
            lines.append(line)
            return "\n".join(lines)

    def command(self, line: str) -> bool:
        """Run a /command; False when it is not one."""
        cmd, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if cmd in ("/save", "/load") and not arg:
            self.log(f"{cmd} needs a file name: {cmd} FILE")
        elif cmd == "/save":
            extra = {} if self.opts.conversation else {"history": self.history}
            st = capture(self.comp, self.model_id(), self.messages if self.opts.conversation else None, extra)
            path = write_session(arg, st)
            self.log(f"saved session to {path} ({len(st.tokens)} tokens"
                     + (f", {len(self.messages)} messages)" if self.opts.conversation else ")"))
        elif cmd == "/load":
            st = read_for(arg, self.comp, self.model_id())
            if self.opts.conversation and st.messages is None:
                raise LlamakitError(f"{arg}: this session has no chat messages (saved in -i mode); use -i")
            restore(self.comp, st)
            if self.opts.conversation:
                self.messages = list(st.messages or [])
            else:
                self.history = [int(t) for t in st.extra.get("history", st.tokens)]
            self.log(f"loaded session {arg} ({len(st.tokens)} tokens"
                     + (f", {len(self.messages)} messages)" if self.opts.conversation else ")"))
        elif cmd == "/clear":
            self.comp.reset()
            self.messages = [m for m in self.messages[:1] if m.get("role") == "system"]
            self.history = [] if self.opts.conversation else self.comp.encode_prompt(self.opts.prompt)
            self.log("conversation cleared")
        elif cmd == "/help":
            self.log(HELP)
        else:
            return False
        return True

    # ----------------------------------------------------------------------------------- the loop
    def run(self) -> None:
        o = self.opts
        pending = (bool(o.prompt) if o.conversation else not self._waiting_at_reverse_prompt())
        if o.conversation and o.prompt:
            self.messages.append({"role": "user", "content": o.prompt})
        while True:
            if pending:
                self.answer()
            pending = False
            if o.conversation:
                self.write("\n")
            elif o.in_prefix:
                self.write(o.in_prefix)
            try:
                text = self.read_input()
            except KeyboardInterrupt:
                self.write("\n")
                return
            if text is None or text.strip() == "/exit":
                return
            if text.startswith("/"):
                try:
                    if self.command(text):
                        continue
                except LlamakitError as e:  # a bad file name or session: say so, keep the conversation
                    self.log(f"error: {e}")
                    continue
            if o.conversation:
                if not text.strip():
                    continue
                self.messages.append({"role": "user", "content": text})
            elif text:
                tok = self.comp.tok
                self.history += (tok.encode(o.in_prefix, add_special=False, parse_special=True)
                                 + tok.encode(text + "\n", add_special=False, parse_special=False)
                                 + tok.encode(o.in_suffix, add_special=False, parse_special=True))
                if o.in_suffix:
                    self.write(o.in_suffix)
            pending = True
