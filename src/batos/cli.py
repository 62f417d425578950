"""`batos`: run the UVM, talk to it, and look after its image.

Exit codes: 0 success; 1 the server or the doctor reported a failure; 2 bad usage or input;
3 the image is locked by a live process; 4 the image cannot be opened (missing, newer schema,
damaged); 5 no reply from the server in time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import tarfile
import tempfile
import shlex
import sys
from typing import Any, Callable

from batos import __version__
from batos.client import BridgeTimeout, Client, RemoteError, default_endpoint

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_LOCKED, EXIT_IMAGE, EXIT_NO_REPLY = 0, 1, 2, 3, 4, 5
HISTORY_FILE = os.path.expanduser(os.environ.get("BATOS_HISTORY", "~/.batos_history"))


class UsageError(Exception):
    """Bad input on the command line."""


def parse_arg(text: str) -> Any:
    """A JSON literal when ``text`` is one, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_kwarg(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise UsageError(f"--kw takes NAME=VALUE with NAME an identifier, not {text!r}")
    return name, parse_arg(value)


def decode_source(text: str) -> str:
    """Source typed on one line with ``\\n`` escapes becomes real lines; real lines stay."""
    if "\n" not in text and "\\n" in text:
        return text.replace("\\n", "\n").replace("\\t", "\t")
    return text


def as_json(value: Any) -> Any:
    """What JSON cannot hold, in a form it can: bytes as ``{"$bytes": base64}``, anything else as
    its repr."""
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(value).decode()}
    return repr(value)


def show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False, default=as_json)


# --- client commands -------------------------------------------------------------------------

def cmd_ping(client: Client, args) -> Any:
    return client.ping()


def cmd_stats(client: Client, args) -> Any:
    return client.stats()


def cmd_describe(client: Client, args) -> Any:
    return client.describe(args.target)


def cmd_get(client: Client, args) -> Any:
    return client.get(args.target, args.slot)


def cmd_set(client: Client, args) -> Any:
    return client.set(args.target, args.slot, parse_arg(args.value))


def cmd_define(client: Client, args) -> Any:
    if (args.source is None) == (args.file is None):
        raise UsageError("give the source either as an argument or with --file (use - for stdin)")
    if args.file is not None:
        with (sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")) as f:
            source = f.read()
    else:
        source = decode_source(args.source)
    return client.call("define", target=args.target, source=source, selector=args.selector)


def cmd_send(client: Client, args) -> Any:
    kwargs = dict(parse_kwarg(k) for k in args.kw)
    if args.expert:
        kwargs["expert"] = args.expert
    examples = [parse_example(e) for e in args.example] if args.example else None
    stream = TextStream(enabled=sys.stdout.isatty() and not args.json)
    result = client.send(args.target, args.selector, *(parse_arg(a) for a in args.args), intent=args.intent,
                         examples=examples, wait=not args.no_wait, on_event=stream.on_event, **kwargs)
    return stream.finish(result)


class TextStream:
    """Model text events printed as they arrive (on a terminal); progress to stderr."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.printed = ""

    def on_event(self, event: dict) -> None:
        if "text" not in event:
            show_progress(event)
        elif self.enabled:
            self.printed += event["text"]
            print(event["text"], end="", flush=True)

    def finish(self, result: Any) -> Any:
        """The result still to print: only the line's end if it was printed piece by piece."""
        if self.printed and result == self.printed:
            return ""
        if self.printed:
            print()
        return result


# --- the mind ----------------------------------------------------------------------------------

ASK_TIMEOUT = 600.0  # a dialogue's model calls can be silent this long between events


def route_line(route: dict) -> str:
    partners = f", then {', '.join(route['partners'])}" if route.get("partners") else ""
    return f"[route: {route['archetype']} → {route['lead']}{partners}]"


class DialoguePrinter:
    """A dialogue as it happens: the route on stderr, each turn's persona then its text as it
    streams (stdout), progress on stderr."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.at_line_start = True
        self.streamed: dict[str, str] = {}  # cycle id -> text printed
        self.current: str | None = None

    def on_event(self, event: dict) -> None:
        if "route" in event:
            print(route_line(event["route"]), file=sys.stderr, flush=True)
        elif "turn" in event:
            turn = event["turn"]
            self.current = turn["cycle"]
            self._write(("" if self.at_line_start else "\n") + f"{turn['persona']}: ")
        elif "text" in event:
            self.streamed[self.current] = self.streamed.get(self.current, "") + event["text"]
            self._write(event["text"])
        elif event.get("state") == "SYNTHESIZING" and self.streamed.get(event.get("cycle")):
            self.streamed[event["cycle"]] = ""
            self._write("\n  (the reply failed the quality gate; revising)\n  ")

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self.at_line_start = text.endswith("\n")

    def finish(self, result: dict) -> str:
        """What is left to print once the reply has come: turns that did not stream, a failed
        partner's reason."""
        lines = []
        for turn in result["turns"]:
            if turn["state"] != "COMPLETE":
                lines.append(f"{turn['persona']}: (no answer: {turn.get('reason')})")
            elif not self.streamed.get(turn["cycle"]):
                lines.append(f"{turn['persona']}: {turn['text']}")
        if not self.at_line_start:
            self._write("\n")
        return "\n".join(lines)


def cmd_ask(client: Client, args) -> Any:
    printer = DialoguePrinter()
    result = client.ask(args.question, persona=args.persona, conversation=args.conversation, depth=args.depth,
                        turns=args.turns, on_event=None if args.json else printer.on_event,
                        timeout=max(args.timeout, ASK_TIMEOUT))
    return result if args.json else printer.finish(result)


def cmd_route(client: Client, args) -> Any:
    if args.teach:
        return client.call("route_teach", text=args.question, archetype=args.teach)
    route = client.route(args.question)
    if args.json:
        return route
    top = ", ".join(f"{a} {s:.2f}" for a, s in route["top"])
    why = {"cue": f" on the words {route['cue']!r}", "exemplar": f" (the taught question {route['exemplar']!r})"}
    return (f"{route_line(route)} depth {route['depth']}, decided by {route['decided_by']}"
            f"{why.get(route['decided_by'], '')}; best two: {top}")


def cmd_personas(client: Client, args) -> Any:
    personas = client.call("personas")
    if args.json:
        return personas
    blocks = []
    for p in personas:
        facets = "\n".join(f"    {f['selector']:<22} {'compiled v' + str(f['version']) if f['compiled'] else 'not compiled'}"
                           f"  {f['intent'][:70]}" for f in p["facets"])
        blocks.append(f"{p['name']}: {p['identity']}\n  mandate: {p['mandate']}\n  voice: {p['voice']}\n"
                      f"  bound to: {p['bound_to']} ({p['expert']})\n  facets:\n{facets}")
    return "\n\n".join(blocks)


def cmd_conversations(client: Client, args) -> Any:
    if args.action == "list":
        found = client.call("conversations_list")
        if args.json:
            return found
        return "\n".join(f"{c['id']}  {c['exchanges']} question(s), {c['turns']} turn(s)  {c['title']}"
                         for c in found) or "(no conversations)"
    if args.action == "prune":
        return client.call("conversations_prune", days=args.older_than)
    conversation = client.call("conversation_show", conversation=args.conversation)
    if args.json:
        return conversation
    lines = [f"conversation {conversation['id']}: {conversation['title']}"]
    for number, exchange in enumerate(conversation["exchanges"], 1):
        lines.append(f"\n[{number}] {exchange['question']}  ({exchange['state']}; {route_line(exchange['route'])})")
        for turn in exchange["turns"]:
            text = turn["text"] if turn["state"] == "complete" else f"({turn['state']}{': ' + turn['reason'] if turn.get('reason') else ''})"
            lines.append(f"{turn['persona']}: {text}")
    return "\n".join(lines)


class Reported:
    """A result to print whole (``--json`` prints it, not the last reply), failed or not."""

    def __init__(self, value: Any, failed: bool = False):
        self.value = value
        self.failed = failed


def cmd_memory(client: Client, args) -> Any:
    if args.action == "ingest":
        return _ingest(client, args)
    if args.action == "search":
        hits = client.memory_search(args.query, k=args.k, mode=args.mode, diverse=args.diverse)
        if args.json:
            return Reported([{key: hit[key] for key in ("source", "chunk", "score", "text")} for hit in hits])
        return "\n\n".join(f"{n}. {hit['source']}  (chunk {hit['chunk']}, score {hit['score']:.4f})"
                            f"{'  § ' + hit['section'] if hit['section'] else ''}\n   {_snippet(hit['text'])}"
                            for n, hit in enumerate(hits, 1)) or "(nothing found)"
    if args.action == "show":
        found = client.call("memory_show", chunk=args.chunk)
        if args.json:
            return Reported(found)
        document = found["document"]
        links = "\n".join(f"    {link['source']} ({link['similarity']:.2f})" for link in document["links"]) or "    (none yet)"
        return (f"chunk {found['chunk']} of {document['source']} ({found['position'] + 1} of {document['chunks']}, "
                f"{found['kind']}){'  § ' + found['section'] if found['section'] else ''}\n\n{found['text']}\n\n"
                f"previous: {found['previous']}  next: {found['next']}\n"
                f"summary: {document['summary'] or '(not yet woven)'}\nlinks:\n{links}")
    if args.action == "list":
        documents = client.call("memory_list")
        if args.json:
            return Reported(documents)
        return "\n".join(f"{d['chunks']:>6} chunks  {d['kind']:<8} {d['source']}" for d in documents) or "(memory is empty)"
    if args.action == "stats":
        return Reported(client.call("memory_stats"))
    return Reported(client.call("memory_forget", source=os.path.abspath(args.source)))


def _ingest(client: Client, args) -> Reported:
    try:
        results = client.memory_ingest(args.paths, on_progress=show_progress)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    failed = any(r["status"] == "refused" for r in results)
    if args.json:
        return Reported(results, failed)
    lines = [f"{r['status']:<9} {r['source']}" + (f"  ({r['chunks']} chunks)" if "chunks" in r else "")
             + (f"  [{r['code']}] {r['error']}" if r["status"] == "refused" else "")
             + (f"  ({r['error']})" if r["status"] == "skipped" else "") for r in results]
    return Reported("\n".join(lines) or "(no files memory takes were found)", failed)


def _snippet(text: str, limit: int = 240) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


CHAT_HELP = "/persona NAME (or /persona to let the router choose), /new (a new conversation), /quit"


def cmd_chat(client: Client, args) -> int:
    """A conversation on stdin: every line a question, answered and streamed; history kept."""
    persona, conversation = args.persona, None
    print(f"batos chat: ask anything. {CHAT_HELP}", file=sys.stderr)
    while True:
        try:
            line = input("> " if sys.stdin.isatty() else "").strip()
        except EOFError:
            return EXIT_OK
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return EXIT_OK
        if line == "/new":
            conversation = None
            print("(a new conversation)", file=sys.stderr)
            continue
        if line.startswith("/persona"):
            persona = line.removeprefix("/persona").strip() or None
            print(f"(lead: {persona or 'chosen by the router'})", file=sys.stderr)
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {CHAT_HELP}", file=sys.stderr)
            continue
        printer = DialoguePrinter()
        try:
            result = client.ask(line, persona=persona, conversation=conversation, on_event=printer.on_event,
                                timeout=max(args.timeout, ASK_TIMEOUT))
        except (RemoteError, BridgeTimeout) as exc:
            printer.finish({"turns": []})
            print(f"error: {exc}", file=sys.stderr)
            continue
        conversation = result["conversation"]
        rest = printer.finish(result)
        if rest:
            print(rest)


def parse_example(text: str) -> dict:
    """An --example: a JSON object {"slots", "args", "kwargs", "result", "after"}, or the short
    form 'slot=value; ...; selector(arg, ...) -> result'."""
    try:
        example = json.loads(text)
    except ValueError:
        example = _short_example(text)
    if not isinstance(example, dict) or set(example) - {"slots", "args", "kwargs", "result", "after"}:
        raise UsageError(f"--example must be a JSON object with slots/args/kwargs/result/after, not {text!r}")
    return example


def _short_example(text: str) -> dict:
    *assignments, call = [part.strip() for part in text.split(";")]
    slots = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep:
            raise UsageError(f"--example: {assignment!r} is not slot=value")
        slots[name.strip()] = parse_arg(value.strip())
    head, arrow, result = call.partition("->")
    if "(" not in head or not head.rstrip().endswith(")"):
        raise UsageError(f"--example: {call!r} is not selector(args) -> result")
    inner = head[head.index("(") + 1:head.rstrip().rindex(")")]
    call_args = json.loads(f"[{inner}]") if inner.strip() else []
    example = {"slots": slots, "args": call_args}
    if arrow:
        example["result"] = parse_arg(result.strip())
    return example


def cmd_cycles(client: Client, args) -> Any:
    if args.action == "list":
        return client.call("cycles_list")
    if args.action == "show":
        return client.call("cycle_show", cycle=args.cycle)
    if args.action == "prune":
        return client.call("cycles_prune", days=args.older_than)
    if args.action == "approve":
        # Approve exactly the source shown here: the server refuses if it has changed since.
        shown = client.call("cycle_show", cycle=args.cycle)
        print(f"approving {shown['selector']} (sha256 {shown['approved_digest']}):\n{shown.get('approved_source') or ''}",
              file=sys.stderr)
        return client.call("cycle_decide", cycle=args.cycle, approve=True, digest=shown["approved_digest"])
    return client.call("cycle_decide", cycle=args.cycle, approve=False)


def cmd_methods(client: Client, args) -> Any:
    if args.rollback is not None:
        return client.call("method_rollback", target=args.target, selector=args.selector, version=args.rollback)
    found = client.call("methods", target=args.target, selector=args.selector)
    if not args.history:
        found.pop("history")
    return found


def cmd_pack(client: Client, args) -> Any:
    return client.pack(args.days)


def cmd_model(client: Client, args) -> Any:
    if args.action == "list":
        return client.call("model_list")
    if args.action == "use":
        return client.call("model_use", on_event=show_progress, name=args.name)
    if args.hub:
        return client.call("model_import", on_event=show_progress, hub_id=args.path, **_name(args))
    with uploadable(args.path) as path:
        upload_id = client.upload(path, on_progress=lambda done, total: show_progress(
            {"progress": {"what": f"sending {os.path.basename(args.path)}", "done": done, "total": total}}))
    return client.call("model_import", on_event=show_progress, upload_id=upload_id,
                       filename=os.path.basename(os.path.abspath(args.path)), **_name(args))


def cmd_expert(client: Client, args) -> Any:
    with uploadable(args.path) as path:
        upload_id = client.upload(path)
    return client.call("expert_import", on_event=show_progress, upload_id=upload_id, **_name(args))


def _name(args) -> dict[str, str]:
    return {"name": args.name} if args.name else {}


@contextlib.contextmanager
def uploadable(path: str):
    """A file to stream: the file itself, or a folder packed into a temporary tar."""
    if not os.path.exists(path):
        raise UsageError(f"{path} does not exist")
    if not os.path.isdir(path):
        yield path
        return
    with tempfile.TemporaryDirectory() as work:
        packed = os.path.join(work, "folder.tar")
        with tarfile.open(packed, "w") as tar:
            tar.add(path, arcname=os.path.basename(os.path.abspath(path)))
        yield packed


def show_progress(event: dict) -> None:
    """A progress bar on a terminal; a line per tenth otherwise (on stderr either way)."""
    progress = event.get("progress")
    if not progress:
        if "state" in event:
            print(f"  {event['state']}", file=sys.stderr, flush=True)
        return
    done, total = progress.get("done", 0), progress.get("total") or 1
    fraction = min(1.0, done / total)
    if sys.stderr.isatty():
        bar = "#" * int(30 * fraction)
        end = "\n" if fraction >= 1 else ""
        print(f"\r  {progress['what'][:40]:<40} [{bar:<30}] {fraction:6.1%}", end=end, file=sys.stderr, flush=True)
    elif int(fraction * 10) != show_progress.__dict__.get("last") or fraction >= 1:
        show_progress.__dict__["last"] = int(fraction * 10)
        print(f"  {progress['what']}: {fraction:.0%}", file=sys.stderr, flush=True)


# --- image commands --------------------------------------------------------------------------

def cmd_run(args) -> int:
    from batos.kernel.logs import configure
    from batos.kernel.uvm import UVM, Settings

    try:
        settings = Settings.from_env(image=args.image, endpoint=args.endpoint, workers=args.workers,
                                     log_file=args.log_file, method_budget=args.method_budget)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    configure(settings.log_file, args.log_level)

    def ready(endpoint: str) -> None:
        print(f"BatOS is listening on {endpoint}", flush=True)
        print(f"try, in another terminal:  batos send genesis_obj describe --endpoint {endpoint}", flush=True)

    return asyncio.run(UVM(settings, on_ready=ready).run())


def cmd_doctor(args) -> int:
    from batos.image.upkeep import doctor

    report = doctor(args.image)
    if args.json:
        print(json.dumps({"clean": report.clean, "problems": report.problems, "notes": report.notes,
                          "objects": report.objects, "blobs": report.blobs}, indent=2))
    else:
        print(f"{report.path}: {report.objects} reachable objects, {report.blobs} blobs")
        for note in report.notes:
            print(f"  note: {note}")
        for problem in report.problems:
            print(f"  PROBLEM: {problem}")
        print("clean" if report.clean else f"{len(report.problems)} problem(s) found")
    return EXIT_OK if report.clean else EXIT_FAILURE


def cmd_backup(args) -> int:
    from batos.image.upkeep import backup

    print(show(backup(args.image, args.repository)))
    return EXIT_OK


def cmd_restore(args) -> int:
    from batos.image.upkeep import restore

    print(show(restore(args.repository, args.image, force=args.force)))
    return EXIT_OK


def cmd_pack_offline(args) -> int:
    from batos.image.upkeep import pack

    print(show(pack(args.image, args.days)))
    return EXIT_OK


def cmd_keys(args) -> int:
    import zmq

    public, secret = zmq.curve_keypair()
    if args.client:
        print(f"BATOS_CURVE_CLIENT_SECRET_KEY={secret.decode()}   # for this client; keep it secret")
        print(f"BATOS_CURVE_CLIENT_PUBLIC_KEY={public.decode()}   # for this client, and a line of the UVM's BATOS_CLIENTS file:")
        print(f"# {public.decode()} user NAME      (or admin)")
        return EXIT_OK
    print(f"BATOS_CURVE_SECRET_KEY={secret.decode()}   # for `batos run`; keep it secret")
    print(f"BATOS_CURVE_SERVER_KEY={public.decode()}   # for clients")
    return EXIT_OK


# --- the shell ---------------------------------------------------------------------------------

SHELL_HELP = """Commands are the client commands of `batos` without the word batos:
  describe genesis_obj           get genesis_obj counter        set genesis_obj counter 0
  send genesis_obj increment     ping    stats    help    quit
A line that starts with an object name is a send:  genesis_obj increment 1 "two"
"""


def cmd_shell(client: Client, args) -> int:
    try:
        import readline
    except ImportError:  # pragma: no cover - not on this platform
        readline = None
    if readline is not None:
        try:
            readline.read_history_file(HISTORY_FILE)
        except (FileNotFoundError, OSError):
            pass
    parser = build_parser()
    print(f"BatOS shell on {client.endpoint}; 'help' for help, Ctrl-D to leave.")
    try:
        while True:
            try:
                line = input("batos> ").strip()
            except EOFError:
                print()
                return EXIT_OK
            except KeyboardInterrupt:
                print()
                continue
            if not line:
                continue
            if line in ("quit", "exit"):
                return EXIT_OK
            if line in ("help", "?"):
                print(SHELL_HELP)
                continue
            run_shell_line(parser, client, line)
    finally:
        if readline is not None:
            try:
                readline.write_history_file(HISTORY_FILE)
            except OSError:
                pass


def run_shell_line(parser: argparse.ArgumentParser, client: Client, line: str) -> None:
    try:
        words = shlex.split(line)
    except ValueError as exc:
        print(f"error: {exc}")
        return
    if words[0] not in CLIENT_COMMANDS:
        words = ["send", *words]
    if words[0] == "shell":
        print("error: already in the shell")
        return
    try:
        args = parser.parse_args(words)
    except SystemExit:
        return
    try:
        print(show(args.handler(client, args)))
    except (RemoteError, BridgeTimeout, UsageError, OSError) as exc:
        print(f"error: {exc}")


# --- wiring -----------------------------------------------------------------------------------

CLIENT_COMMANDS: dict[str, tuple[Callable, str]] = {
    "ping": (cmd_ping, "check that the UVM answers"),
    "stats": (cmd_stats, "figures about the running UVM and its image"),
    "describe": (cmd_describe, "an object's oid, slots, parents and methods"),
    "get": (cmd_get, "read a slot (looked up through parents)"),
    "set": (cmd_set, "write a slot; VALUE is a JSON literal or else a string"),
    "define": (cmd_define, "install a method from Python source"),
    "send": (cmd_send, "send a message; each ARG is a JSON literal or else a string"),
    "pack": (cmd_pack, "pack the running UVM's image (or, with --image, an image nobody serves)"),
    "shell": (cmd_shell, "interactive client with history"),
    "cycles": (cmd_cycles, "list, show, approve, reject and prune cognitive cycles"),
    "methods": (cmd_methods, "a method's source and provenance; --history, --rollback N"),
    "model": (cmd_model, "import, list and switch language models held in the image"),
    "expert": (cmd_expert, "import LoRA adapters (experts) into the image"),
    "ask": (cmd_ask, "ask the personas a question; their turns stream as they are written"),
    "route": (cmd_route, "who would answer a question (no model call for a clear-cut one); --teach adds an exemplar"),
    "chat": (cmd_chat, "a conversation: every line a question, history kept (/persona, /new, /quit)"),
    "personas": (cmd_personas, "each persona: identity, facets (compiled or not), expert"),
    "conversations": (cmd_conversations, "list, show and prune conversations"),
    "memory": (cmd_memory, "ingest documents into the image and search them (ingest, search, show, list, stats, forget)"),
}


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", default=None, help=f"UVM endpoint (default $BATOS_ENDPOINT or {default_endpoint()})")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a reply (default 30)")
    parser.add_argument("--json", action="store_true", help="print the whole reply as one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batos", description="BatOS: a persistent, self-extending object system.",
        epilog="Exit codes: 0 ok, 1 failure reported, 2 usage, 3 image locked, 4 image unusable, 5 no reply.",
    )
    parser.add_argument("--version", action="version", version=f"batos {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="start the UVM on an image and serve it",
                              description="Serve the image until SIGINT/SIGTERM; exit 0 after a clean stop.")
    run.add_argument("--image", default=None, help="storage URI or path (default $BATOS_IMAGE or file://live_image.fs)")
    run.add_argument("--endpoint", default=None, help="bind address (default $BATOS_ENDPOINT or tcp://127.0.0.1:5555)")
    run.add_argument("--workers", type=int, default=None, help="worker threads (default 4)")
    run.add_argument("--method-budget", type=float, default=None, help="seconds a method may run (default 10)")
    run.add_argument("--log-file", default=None, help="JSON-lines log (default logs/batos.jsonl; '' for none)")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(image_handler=cmd_run)

    for name, (handler, summary) in CLIENT_COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        if name not in ("model", "expert", "cycles", "conversations", "memory"):  # those take the options after their action
            _client_options(sub)
        sub.set_defaults(handler=handler)
        if name in ("describe", "get", "set", "define", "send", "methods"):
            sub.add_argument("target", metavar="TARGET", help="root name (genesis_obj) or oid (0x2)")
        if name in ("get", "set"):
            sub.add_argument("slot", metavar="SLOT")
        if name == "set":
            sub.add_argument("value", metavar="VALUE")
        if name == "define":
            sub.add_argument("selector", metavar="SELECTOR", help="the method's name; must match the def")
            sub.add_argument("source", metavar="SOURCE", nargs="?", help="the source; \\n escapes become newlines")
            sub.add_argument("--file", help="read the source from this file (- for stdin)")
        if name == "send":
            sub.add_argument("selector", metavar="SELECTOR")
            sub.add_argument("args", metavar="ARG", nargs="*")
            sub.add_argument("--kw", action="append", default=[], metavar="NAME=VALUE", help="a keyword argument (repeatable)")
            sub.add_argument("--expert", help="shorthand for --kw expert=NAME (pLLM_obj infer_)")
            sub.add_argument("--intent", help="what the method should do, if a cycle has to write it")
            sub.add_argument("--example", action="append", default=[], metavar="JSON",
                             help='an example for the verifier (repeatable): {"slots": {...}, "args": [...], "result": ...} '
                                  "or 'total=10; add_to_total(5) -> 15'")
            sub.add_argument("--no-wait", action="store_true", help="if a cycle starts, return its id at once")
        if name == "methods":
            sub.add_argument("selector", metavar="SELECTOR")
            sub.add_argument("--history", action="store_true", help="show every earlier version")
            sub.add_argument("--rollback", type=int, metavar="N", help="reinstall version N as a new version")
        if name == "cycles":
            actions = sub.add_subparsers(dest="action", metavar="ACTION", required=True)
            actions_list = actions.add_parser("list", help="every cycle, oldest first")
            _client_options(actions_list)
            prune = actions.add_parser("prune", help="forget finished cycles (methods they installed stay)")
            prune.add_argument("--older-than", type=float, default=0, metavar="DAYS",
                               help="only those finished more than DAYS ago (default: all finished)")
            _client_options(prune)
            for verb, text in (("show", "prompts, candidates, verdicts and timings of one cycle"),
                               ("approve", "install the method a cycle awaiting approval wrote"),
                               ("reject", "refuse it; the cycle ends FAILED")):
                action = actions.add_parser(verb, help=text)
                action.add_argument("cycle", metavar="ID")
                _client_options(action)
        if name == "model":
            actions = sub.add_subparsers(dest="action", metavar="ACTION", required=True)
            model_import = actions.add_parser("import", help="import a model folder, .gguf file or archive (or --hub ID)")
            model_import.add_argument("path", metavar="PATH", help="folder, .gguf, tar/zip archive, or a hub id with --hub")
            model_import.add_argument("--name", help="the bundle's name (default: from PATH)")
            model_import.add_argument("--hub", action="store_true", help="PATH is a Hugging Face hub id (needs network)")
            model_list = actions.add_parser("list", help="the bundles in the image and which is active")
            model_use = actions.add_parser("use", help="make a bundle the active model and load it")
            model_use.add_argument("name", metavar="NAME")
            for action in (model_import, model_list, model_use):
                _client_options(action)
        if name == "expert":
            actions = sub.add_subparsers(dest="action", metavar="ACTION", required=True)
            expert_import = actions.add_parser("import", help="import a peft adapter folder or an archive of them")
            expert_import.add_argument("path", metavar="DIR_OR_ARCHIVE")
            expert_import.add_argument("--name", help="the expert's name (default: the folder's name)")
            _client_options(expert_import)
        if name in ("ask", "chat"):
            if name == "ask":
                sub.add_argument("question", metavar="QUESTION")
                sub.add_argument("--conversation", metavar="ID", help="a follow-up in this conversation")
                sub.add_argument("--depth", choices=["auto", "direct", "facets"], default=None,
                                 help="facets: the lead plans and asks its facets; direct: it answers at once "
                                      "(default: the route decides)")
                sub.add_argument("--turns", type=int, default=None, metavar="N",
                                 help="at most N turns in this dialogue (1: the lead alone; default: BATOS_MAX_TURNS)")
            sub.add_argument("--persona", type=str.upper, choices=["BRICK", "ROBIN", "BABS", "ALFRED"],
                             help="who leads (default: the router chooses)")
        if name == "route":
            sub.add_argument("question", metavar="QUESTION")
            sub.add_argument("--teach", metavar="ARCHETYPE", choices=["technical", "emotional", "factual", "system"],
                             help="instead of routing QUESTION, add it as an exemplar of ARCHETYPE")
        if name == "conversations":
            actions = sub.add_subparsers(dest="action", metavar="ACTION", required=True)
            _client_options(actions.add_parser("list", help="every conversation, oldest first"))
            show_one = actions.add_parser("show", help="one conversation: its questions, routes and turns")
            show_one.add_argument("conversation", metavar="ID")
            _client_options(show_one)
            prune = actions.add_parser("prune", help="forget conversations")
            prune.add_argument("--older-than", type=float, default=0, metavar="DAYS",
                               help="only those unchanged for more than DAYS (default: all)")
            _client_options(prune)
        if name == "memory":
            actions = sub.add_subparsers(dest="action", metavar="ACTION", required=True)
            ingest = actions.add_parser("ingest", help="send files (or folders of them) to memory: text, Markdown, HTML, PDF, source")
            ingest.add_argument("paths", metavar="PATH", nargs="+")
            search = actions.add_parser("search", help="the chunks that best answer a query, best first")
            search.add_argument("query", metavar="QUERY")
            search.add_argument("--k", type=int, default=5, help="how many hits (default 5, at most 100)")
            search.add_argument("--mode", choices=["hybrid", "lexical", "vector"], default="hybrid",
                                help="hybrid (default) fuses the embedding ranking with BM25 over chunks holding every "
                                     "word; lexical: BM25 over chunks holding any word; vector: embeddings alone")
            search.add_argument("--diverse", action="store_true", help="drop near-duplicate hits (MMR)")
            show_chunk = actions.add_parser("show", help="a chunk, its document, neighbours, summary and links")
            show_chunk.add_argument("chunk", metavar="CHUNK_ID", type=int)
            forget = actions.add_parser("forget", help="remove a document: its chunks, vectors and index entries")
            forget.add_argument("source", metavar="SOURCE", help="the path it was ingested from")
            for action in (ingest, search, show_chunk, actions.add_parser("list", help="every document in memory"),
                           actions.add_parser("stats", help="documents, chunks, vectors, search method"), forget):
                _client_options(action)
        if name == "pack":
            sub.add_argument("--days", type=float, default=0, help="keep history younger than this many days")
            sub.add_argument("--image", default=None, help="pack this image directly (no UVM may be serving it)")

    doctor = commands.add_parser("doctor", help="check an image's integrity and lock (read-only)",
                                 description="Check structure (fstest), references, blobs, schema and lock; exit 1 on problems.")
    doctor.add_argument("--image", default=None)
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(image_handler=cmd_doctor)

    backup = commands.add_parser("backup", help="back up an image with repozo (works while it is served)")
    backup.add_argument("repository", metavar="REPOSITORY", help="folder holding the backups")
    backup.add_argument("--image", default=None)
    backup.set_defaults(image_handler=cmd_backup)

    restore = commands.add_parser("restore", help="write the newest backup to an image file")
    restore.add_argument("repository", metavar="REPOSITORY")
    restore.add_argument("--image", default=None, help="image to write (default file://live_image.fs)")
    restore.add_argument("--force", action="store_true", help="replace an existing image")
    restore.set_defaults(image_handler=cmd_restore)

    keys = commands.add_parser("keys", help="make a CURVE key pair: the UVM's (for a non-loopback endpoint or "
                                             "BATOS_CLIENTS), or with --client a client's")
    keys.add_argument("--client", action="store_true",
                      help="a client's key pair, to list in the UVM's BATOS_CLIENTS file (PUBLIC_KEY ROLE NAME)")
    keys.set_defaults(image_handler=cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from batos.image.storage import ImageError, ImageLockedError
    from batos.kernel.bridge import BridgeError
    from batos.llm.generation import ConfigurationError

    try:
        if args.command == "pack" and args.image:
            return cmd_pack_offline(args)
        if hasattr(args, "image_handler"):
            return args.image_handler(args)
        with Client(args.endpoint, timeout=args.timeout) as client:
            result = args.handler(client, args)
            if args.command in ("shell", "chat"):
                return result
            if isinstance(result, Reported):
                print(json.dumps(result.value, ensure_ascii=False, indent=None, default=as_json) if args.json else show(result.value))
                return EXIT_FAILURE if result.failed else EXIT_OK
            print(json.dumps(client.last_reply, ensure_ascii=False, default=as_json) if args.json else show(result))
            return EXIT_OK
    except (UsageError, ConfigurationError) as exc:
        print(f"batos: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RemoteError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": {"code": exc.code, "message": exc.message}}))
        else:
            print(f"batos: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    except BridgeTimeout as exc:
        print(f"batos: {exc}", file=sys.stderr)
        return EXIT_NO_REPLY
    except ImageLockedError as exc:
        print(f"batos: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except ImageError as exc:
        print(f"batos: {exc}", file=sys.stderr)
        return EXIT_IMAGE
    except (BridgeError, OSError) as exc:
        print(f"batos: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
