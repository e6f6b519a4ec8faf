"""The agent's YAML config, checked whole and turned into frozen dataclasses.

``load_config`` reads the file with PyYAML's safe composer so every value keeps its line: each
problem becomes one ``ConfigError`` naming the file, the line and the dotted key, and saying what
to do. Defaults live only in the dataclasses below; ``agent.yaml.example`` documents them (a test
keeps the two in step).
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import math
import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from pushagent.errors import ConfigError
from pushagent.exchange.retry import RetryPolicy

__all__ = [
    "LOG_LEVELS",
    "NOTIFY_FORMATS",
    "AgentConfig",
    "ExchangeSettings",
    "Folders",
    "LoggingSettings",
    "MatchingSettings",
    "MetricsSettings",
    "NotifySettings",
    "UploadSettings",
    "ValidationSettings",
    "WatchSettings",
    "load_config",
]

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
# The job categories that wait in WAITING_TO_RECIEVE_DATA for a push producer's file (the third,
# SEGMENT_POPULATE_DB, never waits for data).
PUSH_CATEGORIES = ("SEGMENT_EXPORT", "IDENTITY_IMPORT")


@dataclass(frozen=True, kw_only=True)
class ExchangeSettings:
    base_url: str
    api_key: str = field(repr=False)
    # The push producer endpoint; required with folders: (a pull-only agent needs none).
    endpoint_id: int | None = None
    verify_tls: bool = True
    ca_bundle: Path | None = None
    allow_insecure_http: bool = False
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    # The client's own policy type: its defaults are the documented ones (jitter is not set here).
    retry: RetryPolicy = RetryPolicy()  # noqa: RUF009 (frozen, so one shared default is safe)
    # Where the key was read from, when it came from api_key_file (its permissions are checked).
    api_key_file: Path | None = None


@dataclass(frozen=True, kw_only=True)
class Folders:
    drop: Path
    done: Path
    failed: Path


@dataclass(frozen=True, kw_only=True)
class WatchSettings:
    settle_seconds: float = 2.0
    ignore: tuple[str, ...] = (".*", "*.tmp", "*.part")
    trigger_suffix: str | None = None
    rescan_seconds: float = 30.0
    polling: bool = False
    filename_pattern: re.Pattern[str] | None = None


@dataclass(frozen=True, kw_only=True)
class MatchingSettings:
    poll_seconds: float = 5.0
    # With no file waiting, the jobs are still listed this often: a heartbeat that keeps
    # /healthz and ``status`` true to the Exchange and the key, and shows jobs with no file.
    idle_poll_seconds: float = 60.0
    max_wait_seconds: float = 86400.0
    # Each is its own list call per poll (the category is a path parameter).
    categories: tuple[str, ...] = PUSH_CATEGORIES


@dataclass(frozen=True, kw_only=True)
class ValidationSettings:
    max_bytes: int = 10 * 1024**3  # 0 = no cap
    check_mapped_columns: bool = True


@dataclass(frozen=True, kw_only=True)
class UploadSettings:
    workers: int = 4
    content_type: str = "text/csv"
    max_attempts: int = 8
    initial_backoff: float = 1.0
    max_backoff: float = 300.0
    shutdown_grace_seconds: float = 30.0
    max_bytes_per_second: int = 0  # all workers together; 0 = no cap
    # Read a file once for its first job: validate, hash and send each block, the final block
    # only once the whole file passed (an incomplete body is never accepted). False: validate
    # the whole file first, then send it.
    validate_while_sending: bool = True


@dataclass(frozen=True, kw_only=True)
class LoggingSettings:
    level: str = "INFO"
    file: Path | None = None
    rotation: str = "50 MB"
    retention: str = "14 days"
    json: bool = False


@dataclass(frozen=True, kw_only=True)
class MetricsSettings:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9308
    healthy_within_seconds: float = 300.0


AUTO = "auto"
DELIMITERS = (",", ";", "\t", "|")  # what delimiter: auto chooses among, in order of preference


@dataclass(frozen=True, kw_only=True)
class InputDialect:
    """How a dropped file is written. ``encoding``: ``auto`` (UTF-8, with or without a byte
    order mark, or UTF-16 with one) or a Python codec name; ``delimiter``: ``auto`` (sniffed
    from the header among ``DELIMITERS``) or one character."""

    encoding: str = AUTO
    delimiter: str = AUTO
    quotechar: str = '"'


def _no_dialects() -> Mapping[str, InputDialect]:
    return MappingProxyType({})


NOTIFY_FORMATS = ("json", "slack", "teams")


def _no_headers() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class InputSettings:
    """The dialect of every dropped file, and per segment (its name, id or subfolder as the
    file names it) the keys that differ."""

    encoding: str = AUTO
    delimiter: str = AUTO
    quotechar: str = '"'
    segments: Mapping[str, InputDialect] = field(default_factory=_no_dialects)

    @property
    def default(self) -> InputDialect:
        return InputDialect(encoding=self.encoding, delimiter=self.delimiter,
                            quotechar=self.quotechar)

    def for_segment(self, *names: str | None) -> InputDialect:
        """The first of ``names`` with settings of its own, else the global ones."""
        for name in names:
            if name is not None and name in self.segments:
                return self.segments[name]
        return self.default


@dataclass(frozen=True, kw_only=True)
class NotifySettings:
    # None: no notifications. Not in repr: a Slack or Teams webhook URL is itself a secret.
    webhook_url: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=_no_headers, repr=False)
    format: str = "json"
    after_seconds: float = 300.0  # Exchange unreachable or key refused this long: one post
    max_attempts: int = 5


@dataclass(frozen=True, kw_only=True)
class PullSettings:
    """The pull side: jobs READY_FOR_DOWNLOAD for ``endpoint_id`` land in ``outbox/<jobId>/``."""

    endpoint_id: int
    api_key: str | None = field(default=None, repr=False)  # None: exchange.api_key
    outbox: Path
    poll_seconds: float = 30.0
    delete_after_download: bool = True
    complete_jobs: bool = True
    merge_files: bool = False
    initial_backoff: float = 1.0
    max_backoff: float = 300.0


def _no_segments() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    source: Path
    exchange: ExchangeSettings
    folders: Folders | None = None  # None: no push side (a pull-only agent)
    state_dir: Path
    segments: Mapping[str, str] = field(default_factory=_no_segments)
    watch: WatchSettings = WatchSettings()
    matching: MatchingSettings = MatchingSettings()
    validation: ValidationSettings = ValidationSettings()
    input: InputSettings = InputSettings()
    upload: UploadSettings = UploadSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    notify: NotifySettings = NotifySettings()
    pull: PullSettings | None = None

    def push_side(self) -> tuple[Folders, int]:
        """The folders and endpoint the push side serves (the loader requires both together)."""
        if self.folders is None or self.exchange.endpoint_id is None:
            raise ConfigError(f"{self.source}: no folders: section, so there is no push side")
        return self.folders, self.exchange.endpoint_id


def load_config(path: Path, *, environ: Mapping[str, str], need_key: bool = True) -> AgentConfig:
    """Read, check and resolve ``path``; any problem raises ``ConfigError`` naming file and line.

    ``need_key=False`` is for commands that never call the Exchange (``status``, ``validate``):
    a key that cannot be read (its variable unset, its file unreadable) leaves ``api_key`` empty
    instead of failing.
    """
    return _Reader(Path(path), environ, need_key=need_key).read()


# ---------------------------------------------------------------------------------------------

T = TypeVar("T")
Parser = Callable[[Node, str], Any]

_VAR = re.compile(r"\$\{([^}]*)\}")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# A plain decimal id; YAML 1.1 would read 0755 as octal and 1_000 as 1000, silently.
_DECIMAL = re.compile(r"(0|[1-9][0-9]*)\Z")
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"


class _Scalar:
    """One scalar after ``${VAR}`` substitution: ``text`` as written, ``value`` as YAML reads it."""

    def __init__(self, value: object, text: str, *, substituted: bool) -> None:
        self.value = value
        self.text = text
        self.substituted = substituted


class _Section:
    """A mapping node whose keys were checked against the allowed ones."""

    def __init__(self, reader: _Reader, node: Node, dotted: str, allowed: Iterable[str]) -> None:
        self.node = node
        self.dotted = dotted
        self.values: dict[str, Node] = {}
        self.key_lines: dict[str, int] = {}
        allowed = list(allowed)
        if reader.is_null(node):
            return
        if not isinstance(node, MappingNode):
            reader.fail(node, dotted or "(top level)",
                        f"expected a mapping of keys ({', '.join(allowed)}), got "
                        f"{reader.describe(node)}; write one 'key: value' per line under it")
        reader.flatten(node, dotted)
        for key_node, value_node in node.value:
            name = reader.key_name(key_node, dotted)
            here = f"{dotted}.{name}" if dotted else name
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                reader.fail(key_node, here,
                            f"unknown key; {hint}allowed keys here: {', '.join(allowed)}")
            if name in self.values:
                reader.fail(key_node, here,
                            f"given twice (first on line {self.key_lines[name]}); keep one")
            self.values[name] = value_node
            self.key_lines[name] = key_node.start_mark.line + 1

    def key(self, name: str) -> str:
        return f"{self.dotted}.{name}" if self.dotted else name

    def get(self, name: str) -> Node | None:
        return self.values.get(name)


class _Reader:
    def __init__(self, path: Path, environ: Mapping[str, str], *, need_key: bool = True) -> None:
        self.need_key = need_key
        self.path = Path(os.path.abspath(path))
        self.shown = str(path)
        self.base = self.path.parent
        self.environ = environ
        self.secrets: list[str] = []
        self.folder_nodes: dict[str, Node] = {}
        self.pull_node: Node | None = None

    # -- errors -----------------------------------------------------------------------------

    def fail(self, node: Node | None, key: str, problem: str) -> NoReturn:
        where = f"{self.shown} line {node.start_mark.line + 1}" if node is not None else self.shown
        message = f"{where}: {key}: {problem}"
        for secret in self.secrets:
            message = message.replace(secret, "***")
        raise ConfigError(message)

    def describe(self, node: Node) -> str:
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        if self.is_null(node):
            return "nothing (an empty value)"
        value = self.scalar(node, "").value
        if isinstance(value, bool):
            return f"{str(value).lower()} (a yes/no value)"
        if isinstance(value, int | float):
            return f"a number ({value})"
        if isinstance(value, str):
            shown = value if len(value) <= 60 else value[:57] + "..."
            return repr(shown)
        return f"a {type(value).__name__} value"

    # -- reading -----------------------------------------------------------------------------

    def read(self) -> AgentConfig:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError as e:
            raise ConfigError(
                f"{self.shown}: config file not found; check the path given to -c/--config"
            ) from e
        except (OSError, UnicodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ConfigError(
                f"{self.shown}: cannot read the config file ({reason}); make it a readable "
                "UTF-8 text file"
            ) from e
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = f" line {mark.line + 1}" if mark is not None else ""
            problem = " ".join(str(p) for p in (e.context, e.problem) if p)
            raise ConfigError(
                f"{self.shown}{line}: not valid YAML ({problem}); fix the syntax there "
                "(indent with spaces, 'key: value', quote values containing ': ' or '#')"
            ) from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{self.shown}: not valid YAML ({e}); fix the file") from e
        if root is None:
            raise ConfigError(
                f"{self.shown}: the config file is empty; start from agent.yaml.example"
            )
        return self.agent(root)

    def agent(self, root: Node) -> AgentConfig:
        allowed = [f.name for f in dataclasses.fields(AgentConfig) if f.name != "source"]
        top = _Section(self, root, "", allowed)
        if not isinstance(root, MappingNode):
            self.fail(root, "(top level)", "expected a mapping; start from agent.yaml.example")
        parsers: dict[str, Parser] = {
            "exchange": self.exchange,
            "folders": self.folders,
            "state_dir": self.state_dir,
            "segments": self.segments,
            "watch": self.section_of(WatchSettings, {
                "settle_seconds": self.number(minimum=0.0),
                "ignore": self.patterns,
                "trigger_suffix": self.optional(self.string()),
                "rescan_seconds": self.number(),
                "polling": self.boolean,
                "filename_pattern": self.optional(self.filename_pattern),
            }),
            "matching": self.section_of(MatchingSettings, {
                "poll_seconds": self.number(),
                "idle_poll_seconds": self.number(),
                "max_wait_seconds": self.number(),
                "categories": self.categories,
            }),
            "validation": self.section_of(ValidationSettings, {
                "max_bytes": self.integer(minimum=0),
                "check_mapped_columns": self.boolean,
            }),
            "input": self.input_settings,
            "upload": self.section_of(UploadSettings, {
                "workers": self.integer(minimum=1, maximum=64),
                "content_type": self.string(),
                "max_attempts": self.integer(minimum=1),
                "initial_backoff": self.number(),
                "max_backoff": self.number(),
                "shutdown_grace_seconds": self.number(minimum=0.0),
                "max_bytes_per_second": self.integer(minimum=0),
                "validate_while_sending": self.boolean,
            }, check=self.backoffs),
            "logging": self.section_of(LoggingSettings, {
                "level": self.level,
                "file": self.optional(self.path_value),
                "rotation": self.string(),
                "retention": self.string(),
                "json": self.boolean,
            }),
            "metrics": self.section_of(MetricsSettings, {
                "enabled": self.boolean,
                "host": self.string(),
                "port": self.integer(minimum=0, maximum=65535),
                "healthy_within_seconds": self.number(),
            }),
            "notify": self.needs_secrets(self.section_of(NotifySettings, {
                "webhook_url": self.optional(self.webhook_url),
                "headers": self.headers,
                "format": self.choice(NOTIFY_FORMATS),
                "after_seconds": self.number(minimum=0.0),
                "max_attempts": self.integer(minimum=1),
            }), NotifySettings()),
            "pull": self.pull,
        }
        kwargs = self.fill(AgentConfig, top, parsers)
        config = AgentConfig(source=self.path, **kwargs)
        if config.folders is None and config.pull is None:
            self.fail(root, "folders", "missing; give folders: (files to push), pull: (jobs to "
                      "download), or both (see agent.yaml.example)")
        if config.folders is not None and config.exchange.endpoint_id is None:
            self.fail(top.values["exchange"], "exchange.endpoint_id",
                      "missing; add 'endpoint_id:' under 'exchange:' (the push side, folders:, "
                      "needs the push producer endpoint)")
        self.check_layout(top, config)
        return config

    def fill(self, cls: type, section: _Section, parsers: Mapping[str, Parser]) -> dict[str, Any]:
        """Parse the keys present; a missing required key is an error, a missing optional one
        keeps the dataclass default (the one place defaults live)."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in parsers:
                continue
            node = section.get(f.name)
            if node is None:
                required = f.default is dataclasses.MISSING and (
                    f.default_factory is dataclasses.MISSING
                )
                if required:
                    self.fail(section.node, section.key(f.name),
                              f"missing; add '{f.name}:' "
                              + (f"under '{section.dotted}:' " if section.dotted else "")
                              + "(see agent.yaml.example)")
                continue
            kwargs[f.name] = parsers[f.name](node, section.key(f.name))
        return kwargs

    def section_of(
        self, cls: type[T], parsers: Mapping[str, Parser],
        *, check: Callable[[_Section, Any], None] | None = None,
    ) -> Callable[[Node, str], T]:
        def parse(node: Node, key: str) -> T:
            section = _Section(self, node, key, parsers)
            value = cls(**self.fill(cls, section, parsers))
            if check is not None:
                check(section, value)
            return value
        return parse

    # -- sections with rules of their own ----------------------------------------------------

    def exchange(self, node: Node, key: str) -> ExchangeSettings:
        parsers: dict[str, Parser] = {
            "base_url": self.base_url,
            "endpoint_id": self.endpoint_id,
            "verify_tls": self.boolean,
            "ca_bundle": self.optional(self.existing_path),
            "allow_insecure_http": self.boolean,
            "connect_timeout": self.number(),
            "read_timeout": self.number(),
            "retry": self.section_of(RetryPolicy, {
                "max_attempts": self.integer(minimum=1),
                "max_total_seconds": self.number(),
                "initial_backoff": self.number(),
                "max_backoff": self.number(),
            }, check=self.backoffs),
        }
        allowed = ["base_url", "api_key", "api_key_file", *list(parsers)[1:]]
        section = _Section(self, node, key, allowed)
        if self.is_null(node):
            self.fail(node, key, "expected a mapping with base_url, api_key and endpoint_id; "
                      "see agent.yaml.example")
        try:
            api_key = self.api_key(section)
        except ConfigError:
            if self.need_key:
                raise
            api_key = ""
        key_file = section.get("api_key_file")
        return ExchangeSettings(
            api_key=api_key,
            api_key_file=None if key_file is None else self.path_value(
                key_file, section.key("api_key_file")),
            **self.fill(ExchangeSettings, section, parsers),
        )

    def pull(self, node: Node, key: str) -> PullSettings:
        parsers: dict[str, Parser] = {
            "endpoint_id": self.endpoint_id,
            "outbox": self.existing_dir,
            "poll_seconds": self.number(),
            "delete_after_download": self.boolean,
            "complete_jobs": self.boolean,
            "merge_files": self.boolean,
            "initial_backoff": self.number(),
            "max_backoff": self.number(),
        }
        section = _Section(self, node, key, ["api_key", "api_key_file", *parsers])
        if self.is_null(node):
            self.fail(node, key, "expected a mapping with endpoint_id and outbox; see "
                      "agent.yaml.example")
        given = section.get("api_key") is not None or section.get("api_key_file") is not None
        api_key = self.api_key(section) if given else None
        settings = PullSettings(api_key=api_key, **self.fill(PullSettings, section, parsers))
        self.backoffs(section, settings)
        self.pull_node = section.values.get("outbox")
        return settings

    def api_key(self, section: _Section) -> str:
        inline, from_file = section.get("api_key"), section.get("api_key_file")
        if inline is not None and from_file is not None:
            self.fail(from_file, section.key("api_key_file"),
                      "give either api_key or api_key_file, not both; remove one")
        if inline is not None:
            key = section.key("api_key")
            value = self.string(secret=True)(inline, key).strip()
            if not value:
                self.fail(inline, key, "is empty; set it, e.g. api_key: ${EXCHANGE_API_KEY}")
        elif from_file is not None:
            key = section.key("api_key_file")
            path = self.path_value(from_file, key)
            try:
                value = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeError) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                self.fail(from_file, key, f"cannot read {path} ({reason}); check that the "
                          "file exists and this user may read it")
            if not value:
                self.fail(from_file, key, f"{path} is empty; put the account's API key in it")
        else:
            self.fail(section.node, section.key("api_key"),
                      "missing; add 'api_key: ${EXCHANGE_API_KEY}' or 'api_key_file: <path>' "
                      "under 'exchange:'")
        self.secrets.append(value)
        return value

    def base_url(self, node: Node, key: str) -> str:
        value = self.string()(node, key).strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(node, key, f"expected an http(s) URL such as https://exchange.example.com, "
                      f"got {value!r}; use the base URL assigned to your account")
        return value

    def endpoint_id(self, node: Node, key: str) -> int:
        return int(self.identifier(node, key, text_ok=False))

    def folders(self, node: Node, key: str) -> Folders:
        parsers = {name: self.existing_dir for name in ("drop", "done", "failed")}
        section = _Section(self, node, key, parsers)
        if self.is_null(node):
            self.fail(node, key, "expected a mapping with drop, done and failed; "
                      "see agent.yaml.example")
        self.missing_folders(section)
        folders = Folders(**self.fill(Folders, section, parsers))
        self.folder_nodes = section.values
        return folders

    def missing_folders(self, section: _Section) -> None:
        """Every missing folder in one error, so a new install is fixed in one go."""
        missing: list[tuple[Node, str, Path]] = []
        for name, node in section.values.items():
            path = self.path_value(node, section.key(name))
            if not path.exists():
                missing.append((node, section.key(name), path))
        if len(missing) < 2:
            return  # none, or one: existing_dir says it in the usual words
        lines = "; ".join(f"line {node.start_mark.line + 1} {key}: {path}"
                          for node, key, path in missing)
        paths = " ".join(shlex.quote(str(path)) for _, _, path in missing)
        raise ConfigError(f"{self.shown}: {len(missing)} folders do not exist ({lines}); "
                          f"create them (mkdir -p {paths}) or fix the paths")

    def state_dir(self, node: Node, key: str) -> Path:
        path = self.path_value(node, key)
        if path.exists() and not path.is_dir():
            self.fail(node, key, f"{path} exists but is not a folder; point it at a folder")
        if not path.parent.is_dir():
            self.fail(node, key, f"the parent folder {path.parent} does not exist; create it "
                      "or fix the path")
        try:
            path.mkdir(exist_ok=True)
        except OSError as e:
            self.fail(node, key, f"cannot create {path} ({e.strerror}); create it by hand or "
                      "let this user write in its parent")
        return path

    def segments(self, node: Node, key: str) -> Mapping[str, str]:
        if self.is_null(node):
            return MappingProxyType({})
        if not isinstance(node, MappingNode):
            self.fail(node, key, f"expected a mapping of name: segment id, got "
                      f"{self.describe(node)}; e.g. 'vip_customers: 45311'")
        self.flatten(node, key)
        names: dict[str, str] = {}
        for key_node, value_node in node.value:
            name = self.key_name(key_node, key, word="segment name")
            here = f"{key}.{name}"
            if name in names:
                self.fail(key_node, here, "given twice; keep one")
            names[name] = self.identifier(value_node, here, text_ok=True)
        return MappingProxyType(names)

    def input_settings(self, node: Node, key: str) -> InputSettings:
        dialect = self.dialect_parsers()
        section = _Section(self, node, key, [*dialect, "segments"])
        base = InputSettings(**self.fill(InputSettings, section, dialect))
        self.check_dialect(section, base.default)
        overrides: dict[str, InputDialect] = {}
        segments = section.get("segments")
        if segments is not None and not self.is_null(segments):
            here = section.key("segments")
            if not isinstance(segments, MappingNode):
                self.fail(segments, here, f"expected a mapping of segment name: settings, got "
                          f"{self.describe(segments)}; e.g. 'de_customers: {{delimiter: \";\"}}'")
            self.flatten(segments, here)
            for key_node, value_node in segments.value:
                name = self.key_name(key_node, here, word="segment name")
                where = f"{here}.{name}"
                if name in overrides:
                    self.fail(key_node, where, "given twice; keep one")
                own = _Section(self, value_node, where, dialect)
                values = self.fill(InputDialect, own, dialect)
                overrides[name] = dataclasses.replace(base.default, **values)
                self.check_dialect(own, overrides[name])
        return dataclasses.replace(base, segments=MappingProxyType(overrides))

    def dialect_parsers(self) -> dict[str, Parser]:
        return {"encoding": self.encoding, "delimiter": self.delimiter,
                "quotechar": self.character("a quote character such as '\"'")}

    def encoding(self, node: Node, key: str) -> str:
        text = self.string()(node, key).strip()
        if text.lower() == AUTO:
            return AUTO
        try:
            info = codecs.lookup(text)
        except LookupError:
            self.fail(node, key, f"unknown encoding {text!r}; use auto or a Python codec name "
                      "such as cp1252, latin-1, utf-16le or utf-8")
        if not getattr(info, "_is_text_encoding", True):
            self.fail(node, key, f"{text!r} is not a text encoding; use auto or a codec such as "
                      "cp1252, latin-1 or utf-16le")
        return info.name

    def delimiter(self, node: Node, key: str) -> str:
        scalar = self.scalar(node, key)
        text = scalar.text if isinstance(scalar.value, str) or scalar.substituted else None
        if text is not None and text.strip().lower() in (AUTO, "tab"):
            return AUTO if text.strip().lower() == AUTO else "\t"
        return self.character("auto, tab or one character such as ';' or '|'")(node, key)

    def character(self, what: str) -> Parser:
        def parse(node: Node, key: str) -> str:
            scalar = self.scalar(node, key)
            text = scalar.text if isinstance(scalar.value, str) or scalar.substituted else None
            if text is None or len(text) != 1 or text in "\r\n":
                got = repr(text) if text is not None else self.describe(node)
                self.fail(node, key, f"expected {what}, got {got}; quote it, e.g. '\"\\t\"' "
                          "for a tab")
            return text
        return parse

    def check_dialect(self, section: _Section, dialect: InputDialect) -> None:
        if dialect.delimiter == dialect.quotechar:
            node = section.get("quotechar") or section.get("delimiter") or section.node
            self.fail(node, section.key("quotechar"), f"{dialect.quotechar!r} is also the "
                      "delimiter; they must differ")

    def backoffs(self, section: _Section, value: Any) -> None:
        if value.max_backoff < value.initial_backoff:
            node = section.get("max_backoff") or section.get("initial_backoff") or section.node
            self.fail(node, section.key("max_backoff"),
                      f"{value.max_backoff:g} is below initial_backoff "
                      f"({value.initial_backoff:g}); raise max_backoff or lower initial_backoff")

    def check_layout(self, top: _Section, config: AgentConfig) -> None:
        """The watcher is recursive: done/, failed/, state or the outbox inside drop/ would be
        re-sent; and no two of them may be one folder."""
        nodes = {f"folders.{name}": node for name, node in self.folder_nodes.items()}
        nodes["state_dir"] = top.values["state_dir"]
        others = [("state_dir", config.state_dir)]
        if config.pull is not None and self.pull_node is not None:
            nodes["pull.outbox"] = self.pull_node
            others.append(("pull.outbox", config.pull.outbox))
        if config.folders is None:
            drop = None
            seen: dict[Path, str] = {}
        else:
            drop = config.folders.drop.resolve()
            others = [("folders.done", config.folders.done),
                      ("folders.failed", config.folders.failed), *others]
            seen = {drop: "folders.drop"}
        for key, path in others:
            real = path.resolve()
            if drop is not None and (real == drop or drop in real.parents):
                self.fail(nodes[key], key, f"{path} is the drop folder or inside it, so its "
                          "files would be picked up again; use a folder outside folders.drop")
            if real in seen:
                self.fail(nodes[key], key, f"{path} is also {seen[real]}; give each its own "
                          "folder")
            seen[real] = key

    # -- scalar parsers -----------------------------------------------------------------------

    def flatten(self, node: MappingNode, key: str) -> None:
        """Apply YAML merge keys (``<<: *defaults``) so merged keys are checked like the rest."""
        try:
            SafeConstructor().flatten_mapping(node)
        except yaml.YAMLError as e:
            self.fail(node, key or "(top level)", f"cannot merge here "
                      f"({getattr(e, 'problem', e)}); '<<:' takes a mapping or a list of them")

    def is_null(self, node: Node) -> bool:
        return isinstance(node, ScalarNode) and node.tag == _NULL

    def key_name(self, node: Node, parent: str, *, word: str = "key") -> str:
        value = self.scalar(node, parent).value if isinstance(node, ScalarNode) else None
        if not isinstance(value, str) or not value:
            where = parent or "(top level)"
            self.fail(node, where, f"a {word} must be a word, got {self.describe(node)}; "
                      "quote it if it really is a number")
        return value

    def scalar(self, node: Node, key: str) -> _Scalar:
        if not isinstance(node, ScalarNode):
            self.fail(node, key, f"expected a single value, got {self.describe(node)}")
        try:
            if node.tag != _STR or "${" not in node.value:
                return _Scalar(SafeConstructor().construct_object(node), str(node.value),
                               substituted=False)
        except yaml.YAMLError as e:
            self.fail(node, key, f"cannot read this value ({getattr(e, 'problem', e)}); "
                      "quote it if it is text")
        text = self.substitute(node, key)
        if node.style is not None:  # quoted: stays text whatever the variable holds
            return _Scalar(text, text, substituted=True)
        # Unquoted: read the variable's value as YAML would (port: ${PORT} gives a number).
        tag = Resolver().resolve(ScalarNode, text, (True, False))
        plain = ScalarNode(tag, text, node.start_mark, node.end_mark)
        try:
            value = SafeConstructor().construct_object(plain)
        except yaml.YAMLError:
            value = text
        return _Scalar(value, text, substituted=True)

    def substitute(self, node: ScalarNode, key: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if not _VAR_NAME.match(name):
                self.fail(node, key, f"'${{{name}}}' is not a variable name; use ${{NAME}} with "
                          "letters, digits and _")
            if name not in self.environ:
                self.fail(node, key, f"environment variable {name} is not set; export it "
                          "before starting the agent, or write the value here")
            return self.environ[name]
        return _VAR.sub(replace, str(node.value))

    def string(self, *, secret: bool = False) -> Parser:
        def parse(node: Node, key: str) -> str:
            scalar = self.scalar(node, key)
            if isinstance(scalar.value, str) or scalar.substituted:
                if not scalar.text.strip():
                    self.fail(node, key, "is empty; give a value or remove the key to keep "
                              "the default")
                return scalar.text
            got = "a value that is not text" if secret else self.describe(node)
            self.fail(node, key, f"expected text, got {got}; quote it")
        return parse

    def optional(self, parse: Parser) -> Parser:
        def parse_optional(node: Node, key: str) -> Any:
            return None if self.is_null(node) else parse(node, key)
        return parse_optional

    def boolean(self, node: Node, key: str) -> bool:
        value = self.scalar(node, key).value
        if not isinstance(value, bool):
            self.fail(node, key, f"expected true or false, got {self.describe(node)}")
        return value

    def number(self, *, minimum: float | None = None) -> Parser:
        """A float; ``minimum`` None means strictly positive."""
        def parse(node: Node, key: str) -> float:
            value = self.scalar(node, key).value
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.fail(node, key, f"expected a number, got {self.describe(node)}; write "
                          "a number of seconds such as 5 or 0.5")
            if not math.isfinite(value):
                self.fail(node, key, f"expected a finite number, got {value}")
            if minimum is None and value <= 0:
                self.fail(node, key, f"must be above 0, got {value:g}")
            if minimum is not None and value < minimum:
                self.fail(node, key, f"must be at least {minimum:g}, got {value:g}")
            return float(value)
        return parse

    def integer(self, *, minimum: int, maximum: int | None = None) -> Parser:
        def parse(node: Node, key: str) -> int:
            value = self.scalar(node, key).value
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(node, key, f"expected a whole number, got {self.describe(node)}")
            if value < minimum or (maximum is not None and value > maximum):
                bounds = f"from {minimum} to {maximum}" if maximum is not None else (
                    f"at least {minimum}")
                self.fail(node, key, f"must be {bounds}, got {value}")
            return value
        return parse

    def identifier(self, node: Node, key: str, *, text_ok: bool) -> str:
        """An id as its exact decimal text: never through a float (real ids exceed 2**53)."""
        scalar = self.scalar(node, key)
        value, text = scalar.value, scalar.text.strip()
        if isinstance(value, int) and not isinstance(value, bool):
            if not _DECIMAL.match(text):
                self.fail(node, key, f"write the id {text!r} as plain decimal digits "
                          "(no sign, leading zero or _)" + (", or quote it if it is a text id"
                                                            if text_ok else ""))
            return text
        if isinstance(value, str) and text and (text_ok or _DECIMAL.match(text)):
            return text
        what = "a whole number or a text id" if text_ok else "a whole number"
        self.fail(node, key, f"expected {what}, got {self.describe(node)}"
                  + ("; quote text ids" if text_ok else ""))

    def path_value(self, node: Node, key: str) -> Path:
        text = self.string()(node, key)
        path = Path(text).expanduser()
        # Relative to the config file, not the working directory: a service's cwd is arbitrary.
        return Path(os.path.normpath(self.base / path))

    def existing_path(self, node: Node, key: str) -> Path:
        path = self.path_value(node, key)
        if not path.exists():
            self.fail(node, key, f"{path} does not exist; fix the path")
        return path

    def existing_dir(self, node: Node, key: str) -> Path:
        path = self.path_value(node, key)
        if not path.exists():
            self.fail(node, key, f"folder {path} does not exist; create it (mkdir -p {path}) "
                      "or fix the path")
        if not path.is_dir():
            self.fail(node, key, f"{path} is not a folder; point it at a folder")
        return path

    def patterns(self, node: Node, key: str) -> tuple[str, ...]:
        if not isinstance(node, SequenceNode):
            self.fail(node, key, f"expected a list of file name patterns, got "
                      f"{self.describe(node)}; e.g. ['.*', '*.tmp']")
        return tuple(self.string()(item, f"{key}[{n}]") for n, item in enumerate(node.value))

    def filename_pattern(self, node: Node, key: str) -> re.Pattern[str]:
        text = self.string()(node, key)
        try:
            pattern = re.compile(text)
        except re.error as e:
            self.fail(node, key, f"not a valid regular expression ({e}); fix it, e.g. "
                      r"'(?P<segment>\d+)_.*\.csv'")
        if "segment" not in pattern.groupindex:
            self.fail(node, key, "needs a named group (?P<segment>...) that captures the segment "
                      r"name or id, e.g. '(?P<segment>\d+)_.*\.csv'")
        return pattern

    def needs_secrets(self, parse: Parser, fallback: Any) -> Parser:
        """A section only the running agent uses, which may name secrets (``${HOOK_TOKEN}``):
        without ``need_key`` it falls back to ``fallback`` instead of failing."""
        def parse_or_fallback(node: Node, key: str) -> Any:
            try:
                return parse(node, key)
            except ConfigError:
                if self.need_key:
                    raise
                return fallback
        return parse_or_fallback

    def webhook_url(self, node: Node, key: str) -> str:
        value = self.string(secret=True)(node, key).strip()  # a Slack URL is itself a secret
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(node, key, "expected an http(s) URL, e.g. https://hooks.slack.com/services/"
                      "...; paste the webhook's URL")
        self.secrets.append(value)
        return value

    def choice(self, allowed: tuple[str, ...]) -> Parser:
        def parse(node: Node, key: str) -> str:
            value = self.string()(node, key).strip().lower()
            if value not in allowed:
                self.fail(node, key, f"unknown value {value!r}; use one of {', '.join(allowed)}")
            return value
        return parse

    def headers(self, node: Node, key: str) -> Mapping[str, str]:
        """HTTP headers for a webhook; their values may hold a token, so they are masked."""
        if self.is_null(node):
            return MappingProxyType({})
        if not isinstance(node, MappingNode):
            self.fail(node, key, f"expected a mapping of header: value, got "
                      f"{self.describe(node)}; e.g. 'Authorization: Bearer ${{HOOK_TOKEN}}'")
        self.flatten(node, key)
        headers: dict[str, str] = {}
        for key_node, value_node in node.value:
            name = self.key_name(key_node, key, word="header name")
            value = self.string(secret=True)(value_node, f"{key}.{name}")
            if any(c in name + value for c in "\r\n"):
                self.fail(value_node, f"{key}.{name}", "must be one line")
            self.secrets.append(value)
            headers[name] = value
        return MappingProxyType(headers)

    def categories(self, node: Node, key: str) -> tuple[str, ...]:
        if not isinstance(node, SequenceNode) or not node.value:
            self.fail(node, key, f"expected a list of job categories, got {self.describe(node)}; "
                      f"e.g. [{', '.join(PUSH_CATEGORIES)}]")
        chosen: list[str] = []
        for n, item in enumerate(node.value):
            value = self.string()(item, f"{key}[{n}]").strip().upper()
            if value not in PUSH_CATEGORIES:
                self.fail(item, f"{key}[{n}]", f"{value!r} is not a category whose jobs wait for a "
                          f"push producer's data; use {' or '.join(PUSH_CATEGORIES)}")
            if value in chosen:
                self.fail(item, f"{key}[{n}]", f"{value} is given twice; keep one")
            chosen.append(value)
        return tuple(chosen)

    def level(self, node: Node, key: str) -> str:
        value = self.string()(node, key).strip().upper()
        if value not in LOG_LEVELS:
            self.fail(node, key, f"unknown level {value!r}; use one of {', '.join(LOG_LEVELS)}")
        return value
