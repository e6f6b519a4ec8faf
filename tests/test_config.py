"""pushagent.config: YAML -> frozen dataclasses, and one actionable error per mistake."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

import pytest

from pushagent.config import (
    AgentConfig,
    ExchangeSettings,
    InputDialect,
    InputSettings,
    LoggingSettings,
    MatchingSettings,
    MetricsSettings,
    NotifySettings,
    PullSettings,
    UploadSettings,
    ValidationSettings,
    WatchSettings,
    load_config,
)
from pushagent.errors import ConfigError
from pushagent.exchange import RetryPolicy

EXAMPLE = Path(__file__).resolve().parent.parent / "agent.yaml.example"
KEY = "sk-test-7f3a9c1e5b"
ENV = {"EXCHANGE_API_KEY": KEY}
BIG_ID = 2**60 + 1  # above 2**53: a float would change it

MINIMAL = """\
exchange:
  base_url: https://exchange.example.com
  api_key: ${EXCHANGE_API_KEY}
  endpoint_id: 85
folders:
  drop: ./drop
  done: ./done
  failed: ./failed
state_dir: ./state
segments:
  vip_customers: 45311
matching:
  poll_seconds: 5
"""


def home(tmp_path: Path, text: str = MINIMAL) -> Path:
    for name in ("drop", "done", "failed"):
        (tmp_path / name).mkdir(exist_ok=True)
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def line_of(text: str, fragment: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in the config")


def error(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=ENV if env is None else env)
    message = str(info.value)
    assert message.startswith((f"{path} line ", f"{path}: "))
    assert KEY not in message
    return message


def broken(tmp_path: Path, old: str, new: str) -> tuple[Path, str]:
    assert old in MINIMAL
    text = MINIMAL.replace(old, new)
    return home(tmp_path, text), text


def test_a_full_config_round_trips(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    path = home(tmp_path, f"""\
exchange:
  base_url: https://exchange.example.com/
  api_key: "${{EXCHANGE_API_KEY}}"
  endpoint_id: "85"
  verify_tls: true
  ca_bundle: ca.pem
  allow_insecure_http: false
  connect_timeout: 3
  read_timeout: 60.5
  retry: {{max_attempts: 2, max_total_seconds: 9, initial_backoff: 0.1, max_backoff: 2}}
folders: {{drop: drop, done: done, failed: failed}}
state_dir: state
segments:
  vip_customers: 45311
  big: {BIG_ID}
  by_text: "abc-segment"
watch:
  settle_seconds: 0
  ignore: ["*.tmp", "~*"]
  trigger_suffix: .ready
  rescan_seconds: 10
  polling: true
  filename_pattern: '(?P<segment>\\d+)_.*\\.csv'
matching: {{poll_seconds: 1.5, max_wait_seconds: 600}}
validation: {{max_bytes: 0, check_mapped_columns: false}}
upload:
  workers: 64
  content_type: text/plain
  max_attempts: 3
  initial_backoff: 0.5
  max_backoff: 5
  shutdown_grace_seconds: 0
logging: {{level: debug, file: logs/agent.log, rotation: 1 day, retention: 3 days, json: true}}
metrics: {{enabled: true, host: 0.0.0.0, port: 0, healthy_within_seconds: 60}}
""")
    config = load_config(path, environ=ENV)
    assert config.source == path
    assert config.exchange == ExchangeSettings(
        base_url="https://exchange.example.com/", api_key=KEY, endpoint_id=85,
        verify_tls=True, ca_bundle=tmp_path / "ca.pem", allow_insecure_http=False,
        connect_timeout=3.0, read_timeout=60.5,
        retry=RetryPolicy(max_attempts=2, max_total_seconds=9.0, initial_backoff=0.1,
                            max_backoff=2.0),
    )
    assert isinstance(config.exchange.connect_timeout, float)
    assert (config.folders.drop, config.folders.done, config.folders.failed) == (
        tmp_path / "drop", tmp_path / "done", tmp_path / "failed")
    assert config.state_dir == tmp_path / "state"
    assert dict(config.segments) == {
        "vip_customers": "45311", "big": str(BIG_ID), "by_text": "abc-segment"}
    assert "big" in config.segments and config.segments["big"] == str(BIG_ID)
    pattern = config.watch.filename_pattern
    assert pattern is not None and pattern.pattern == r"(?P<segment>\d+)_.*\.csv"
    assert config.watch == WatchSettings(
        settle_seconds=0.0, ignore=("*.tmp", "~*"), trigger_suffix=".ready",
        rescan_seconds=10.0, polling=True, filename_pattern=pattern,
    )
    assert config.matching == MatchingSettings(poll_seconds=1.5, max_wait_seconds=600.0)
    assert config.validation == ValidationSettings(max_bytes=0, check_mapped_columns=False)
    assert config.upload == UploadSettings(
        workers=64, content_type="text/plain", max_attempts=3, initial_backoff=0.5,
        max_backoff=5.0, shutdown_grace_seconds=0.0,
    )
    assert config.logging == LoggingSettings(
        level="DEBUG", file=tmp_path / "logs" / "agent.log", rotation="1 day",
        retention="3 days", json=True,
    )
    assert config.metrics == MetricsSettings(
        enabled=True, host="0.0.0.0", port=0, healthy_within_seconds=60.0)


def test_a_minimal_config_takes_the_defaults(tmp_path: Path) -> None:
    config = load_config(home(tmp_path), environ=ENV)
    assert config.state_dir.is_dir()  # created on load
    assert config.watch == WatchSettings()
    assert config.upload == UploadSettings()
    assert config.exchange.retry == RetryPolicy()
    assert config.exchange.endpoint_id == 85
    assert config.segments["vip_customers"] == "45311"


def test_values_are_frozen(tmp_path: Path) -> None:
    config = load_config(home(tmp_path), environ=ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.state_dir = tmp_path  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.segments["new"] = "1"  # type: ignore[index]


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "pushagent"
    folder.mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (folder / "key.txt").write_text(f"  {KEY}\n")
    text = MINIMAL.replace("api_key: ${EXCHANGE_API_KEY}", "api_key_file: key.txt").replace(
        "failed: ./failed", "failed: ../../shared")
    path = home(folder, text)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path(os.path.relpath(path)), environ={})
    assert config.source == path
    assert config.folders.drop == folder / "drop"
    assert config.folders.failed == tmp_path / "shared"
    assert config.state_dir == folder / "state"
    assert config.exchange.api_key == KEY  # read and stripped


def test_a_variable_inside_a_longer_string_and_a_numeric_variable(tmp_path: Path) -> None:
    path = home(tmp_path, MINIMAL.replace(
        "https://exchange.example.com", "https://${HOST}:${PORT}/api").replace(
        "poll_seconds: 5", "poll_seconds: ${POLL}"))
    config = load_config(path, environ={**ENV, "HOST": "ex.example.net", "PORT": "8443",
                                        "POLL": "2.5"})
    assert config.exchange.base_url == "https://ex.example.net:8443/api"
    assert config.matching.poll_seconds == 2.5


def test_an_all_digit_key_from_the_environment_stays_text(tmp_path: Path) -> None:
    config = load_config(home(tmp_path), environ={"EXCHANGE_API_KEY": "0012345"})
    assert config.exchange.api_key == "0012345"


def test_the_api_key_is_in_no_repr(tmp_path: Path) -> None:
    config = load_config(home(tmp_path), environ=ENV)
    assert KEY not in repr(config)
    assert KEY not in repr(config.exchange)
    assert KEY not in str(config)


def test_the_api_key_is_masked_when_a_message_would_echo_it(tmp_path: Path) -> None:
    path, _ = broken(tmp_path, "poll_seconds: 5", "poll_seconds: ${EXCHANGE_API_KEY}")
    message = error(path)
    assert "matching.poll_seconds" in message
    assert "***" in message


def test_a_wrong_type_names_file_line_and_key(tmp_path: Path) -> None:
    path, text = broken(tmp_path, "poll_seconds: 5", "poll_seconds: fast")
    assert error(path) == (
        f"{path} line {line_of(text, 'poll_seconds')}: matching.poll_seconds: expected a "
        "number, got 'fast'; write a number of seconds such as 5 or 0.5"
    )


@pytest.mark.parametrize(("old", "new", "key", "words"), [
    ("poll_seconds: 5", "poll_seconds: true", "matching.poll_seconds", "expected a number"),
    ("poll_seconds: 5", "poll_seconds: 0", "matching.poll_seconds", "must be above 0"),
    ("poll_seconds: 5", "poll_seconds: .inf", "matching.poll_seconds", "finite"),
    ("poll_seconds: 5", "poll_seconds: [1, 2]", "matching.poll_seconds", "got a list"),
    ("endpoint_id: 85", "endpoint_id: true", "exchange.endpoint_id", "whole number"),
    ("endpoint_id: 85", "endpoint_id: 85.0", "exchange.endpoint_id", "whole number"),
    ("endpoint_id: 85", "endpoint_id: abc", "exchange.endpoint_id", "whole number"),
    ("vip_customers: 45311", "vip_customers: 0755", "segments.vip_customers", "decimal"),
    ("vip_customers: 45311", "vip_customers: 4.5", "segments.vip_customers", "quote text"),
    ("vip_customers: 45311", "45311: 45311", "segments", "must be a word"),
    ("base_url: https://exchange.example.com", "base_url: exchange.example.com",
     "exchange.base_url", "http(s) URL"),
    ("poll_seconds: 5", "poll_seconds: 5\nupload: {workers: 0}", "upload.workers",
     "from 1 to 64"),
    ("poll_seconds: 5", "poll_seconds: 5\nupload: {workers: 65}", "upload.workers",
     "from 1 to 64"),
    ("poll_seconds: 5", "poll_seconds: 5\nmetrics: {port: 70000}", "metrics.port",
     "from 0 to 65535"),
    ("poll_seconds: 5", "poll_seconds: 5\nwatch: {settle_seconds: -1}", "watch.settle_seconds",
     "at least 0"),
    ("poll_seconds: 5", "poll_seconds: 5\nwatch: {ignore: '*.tmp'}", "watch.ignore",
     "list of file name patterns"),
    ("poll_seconds: 5", "poll_seconds: 5\nwatch: {polling: 1}", "watch.polling",
     "true or false"),
    ("poll_seconds: 5", "poll_seconds: 5\nlogging: {level: LOUD}", "logging.level",
     "use one of"),
    ("poll_seconds: 5", "poll_seconds: 5\nlogging: {rotation: 50}", "logging.rotation",
     "expected text"),
    ("poll_seconds: 5", "poll_seconds: 5\nupload: {initial_backoff: 5, max_backoff: 1}",
     "upload.max_backoff", "below initial_backoff"),
])
def test_wrong_values_are_refused_with_their_line(
    tmp_path: Path, old: str, new: str, key: str, words: str
) -> None:
    path, text = broken(tmp_path, old, new)
    message = error(path)
    fragment = new.splitlines()[-1].split(":")[0].strip("{ ")
    assert f" line {line_of(text, fragment)}: {key}: " in message
    assert words in message


def test_a_key_given_twice(tmp_path: Path) -> None:
    path = home(tmp_path, MINIMAL + "matching: {}\n")
    assert error(path).startswith(
        f"{path} line 14: matching: given twice (first on line 12); keep one")


def test_yaml_merge_keys_are_checked_like_the_rest(tmp_path: Path) -> None:
    path = home(tmp_path, MINIMAL + "defaults: &d {poll_seconds: 1}\n")
    assert "defaults: unknown key" in error(path)
    path = home(tmp_path, MINIMAL.replace("matching:\n  poll_seconds: 5\n",
                                          "matching:\n  <<: {max_wait_seconds: 60}\n"))
    assert load_config(path, environ=ENV).matching.max_wait_seconds == 60.0
    path = home(tmp_path, MINIMAL.replace("poll_seconds: 5", "<<: 5"))
    assert f"line {line_of(MINIMAL, 'poll_seconds')}: matching: cannot merge" in error(path)


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    path = home(tmp_path, MINIMAL + "logging:\n  level: warning\n")
    assert load_config(path, environ=ENV).logging.level == "WARNING"


def test_an_unknown_top_level_key_lists_the_allowed_ones(tmp_path: Path) -> None:
    path, text = broken(tmp_path, "matching:", "matchin:")
    message = error(path)
    assert message.startswith(f"{path} line {line_of(text, 'matchin:')}: matchin: unknown key")
    assert "did you mean 'matching'?" in message
    assert "allowed keys here: exchange, folders, state_dir, segments, watch," in message


def test_an_unknown_nested_key_is_named_with_its_path(tmp_path: Path) -> None:
    path, text = broken(tmp_path, "endpoint_id: 85",
                        "endpoint_id: 85\n  retry:\n    max_attempt: 3")
    message = error(path)
    assert message.startswith(
        f"{path} line {line_of(text, 'max_attempt:')}: exchange.retry.max_attempt: unknown key")
    assert "max_attempts, max_total_seconds, initial_backoff, max_backoff" in message


def test_a_missing_required_key(tmp_path: Path) -> None:
    path, _ = broken(tmp_path, "  endpoint_id: 85\n", "")
    message = error(path)
    assert message.startswith(f"{path} line 2: exchange.endpoint_id: missing;")
    assert "add 'endpoint_id:' under 'exchange:'" in message


def test_a_missing_required_section(tmp_path: Path) -> None:
    path, _ = broken(tmp_path, "state_dir: ./state\n", "")
    assert error(path).startswith(f"{path} line 1: state_dir: missing;")


def test_a_missing_api_key(tmp_path: Path) -> None:
    path, _ = broken(tmp_path, "  api_key: ${EXCHANGE_API_KEY}\n", "")
    message = error(path)
    assert "exchange.api_key: missing" in message
    assert "api_key_file" in message


def test_a_missing_folder(tmp_path: Path) -> None:
    path, text = broken(tmp_path, "done: ./done", "done: ./finished")
    message = error(path)
    assert message.startswith(f"{path} line {line_of(text, 'finished')}: folders.done: folder ")
    assert str(tmp_path / "finished") in message
    assert "mkdir -p" in message


def test_a_folder_that_is_a_file(tmp_path: Path) -> None:
    path = home(tmp_path)
    shutil.rmtree(tmp_path / "failed")
    (tmp_path / "failed").write_text("")
    assert f"line {line_of(MINIMAL, 'failed:')}: folders.failed: " in error(path)


def test_done_inside_drop_is_refused(tmp_path: Path) -> None:
    (tmp_path / "drop" / "done").mkdir(parents=True)
    path, text = broken(tmp_path, "done: ./done", "done: ./drop/done")
    message = error(path)
    assert f" line {line_of(text, 'drop/done')}: folders.done: " in message
    assert "inside it" in message


def test_two_folders_in_one_place_are_refused(tmp_path: Path) -> None:
    path, text = broken(tmp_path, "failed: ./failed", "failed: ./done/")
    message = error(path)
    assert f" line {line_of(text, 'failed:')}: folders.failed: " in message
    assert "is also folders.done" in message


def test_state_dir_is_created_but_its_parent_must_exist(tmp_path: Path) -> None:
    path, text = broken(tmp_path, "state_dir: ./state", "state_dir: ./var/state")
    message = error(path)
    assert message.startswith(f"{path} line {line_of(text, 'state_dir')}: state_dir: ")
    assert "parent folder" in message
    assert not (tmp_path / "var").exists()


def test_an_unset_variable_names_the_variable_key_and_line(tmp_path: Path) -> None:
    path = home(tmp_path)
    message = error(path, env={})
    assert message == (
        f"{path} line 3: exchange.api_key: environment variable EXCHANGE_API_KEY is not set; "
        "export it before starting the agent, or write the value here"
    )


def test_both_api_key_and_api_key_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text(KEY)
    path, text = broken(tmp_path, "endpoint_id: 85", "endpoint_id: 85\n  api_key_file: key.txt")
    message = error(path)
    assert message.startswith(
        f"{path} line {line_of(text, 'api_key_file')}: exchange.api_key_file: give either")


def test_an_unreadable_api_key_file_is_named(tmp_path: Path) -> None:
    path, text = broken(tmp_path, "api_key: ${EXCHANGE_API_KEY}", "api_key_file: secret/key")
    message = error(path)
    assert message.startswith(
        f"{path} line {line_of(text, 'api_key_file')}: exchange.api_key_file: cannot read "
        f"{tmp_path / 'secret' / 'key'}")


def test_an_inline_key_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    path, _ = broken(tmp_path, "api_key: ${EXCHANGE_API_KEY}", "api_key: 987654321")
    message = error(path)
    assert "exchange.api_key: expected text" in message
    assert "987654321" not in message


def test_a_bad_regex(tmp_path: Path) -> None:
    path = home(tmp_path, MINIMAL + "watch:\n  filename_pattern: '(?P<segment>\\d+'\n")
    message = error(path)
    assert message.startswith(f"{path} line 15: watch.filename_pattern: not a valid regular")


def test_a_regex_without_the_segment_group(tmp_path: Path) -> None:
    path = home(tmp_path, MINIMAL + "watch:\n  filename_pattern: '(\\d+)_.*'\n")
    message = error(path)
    assert message.startswith(f"{path} line 15: watch.filename_pattern: needs a named group")
    assert "(?P<segment>" in message


def test_a_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path, _ = broken(tmp_path, "poll_seconds: 5", "poll_seconds: [5")
    message = error(path)
    assert re.match(rf"{re.escape(str(path))} line \d+: not valid YAML \(", message)
    assert "fix the syntax" in message


def test_a_tab_indent_names_its_line(tmp_path: Path) -> None:
    path, _ = broken(tmp_path, "  poll_seconds: 5", "\tpoll_seconds: 5")
    assert error(path).startswith(f"{path} line {line_of(MINIMAL, 'poll_seconds')}: not valid")


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert error(path) == (
        f"{path}: config file not found; check the path given to -c/--config"
    )


def test_an_empty_file(tmp_path: Path) -> None:
    path = home(tmp_path, "# nothing yet\n")
    assert "the config file is empty" in error(path)


def test_a_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = home(tmp_path, "exchange: [not, a, mapping]\n")
    message = error(path)
    assert message.startswith(f"{path} line 1: exchange: expected a mapping")


def test_the_example_documents_every_default(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    shutil.copy(EXAMPLE, path)
    for name in ("drop", "done", "failed"):
        (tmp_path / name).mkdir()
    config = load_config(path, environ=ENV)
    assert config.exchange.api_key == KEY
    for section, cls in [
        (config.exchange.retry, RetryPolicy), (config.watch, WatchSettings),
        (config.matching, MatchingSettings), (config.validation, ValidationSettings),
        (config.upload, UploadSettings), (config.logging, LoggingSettings),
        (config.metrics, MetricsSettings), (config.notify, NotifySettings),
        (config.input, InputSettings),
    ]:
        assert section == cls(), cls.__name__
    required = {"base_url", "api_key", "endpoint_id"}
    for f in dataclasses.fields(ExchangeSettings):
        if f.name not in required and f.name != "retry":
            assert getattr(config.exchange, f.name) == f.default, f.name
    # Every key the loader knows appears in the example, so none goes undocumented.
    text = EXAMPLE.read_text()
    for cls in (AgentConfig, ExchangeSettings, RetryPolicy, WatchSettings, MatchingSettings,
                ValidationSettings, UploadSettings, LoggingSettings, MetricsSettings,
                NotifySettings, PullSettings, InputSettings):
        for f in dataclasses.fields(cls):
            if f.name not in ("source", "jitter"):  # jitter is the client's, not a setting
                assert re.search(rf"^\s*#?\s*{f.name}:", text, re.MULTILINE), f.name
    assert "api_key_file:" in text


PULL_ONLY = """\
exchange:
  base_url: https://exchange.example.com
  api_key: ${EXCHANGE_API_KEY}
state_dir: ./state
pull:
  endpoint_id: 7
  outbox: ./inbox
"""


def test_a_pull_only_config_needs_no_folders_and_no_push_endpoint(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    path = tmp_path / "agent.yaml"
    path.write_text(PULL_ONLY)
    config = load_config(path, environ=ENV)
    assert config.folders is None and config.exchange.endpoint_id is None
    assert config.pull == PullSettings(endpoint_id=7, outbox=tmp_path / "inbox")
    with pytest.raises(ConfigError, match="no push side"):
        config.push_side()


def test_the_examples_pull_section_uncommented_gives_the_defaults(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    start = text.index("# pull:")
    section = "\n".join(line[2:] for line in text[start:].splitlines())
    (tmp_path / "inbox").mkdir()
    path = home(tmp_path, MINIMAL + section.replace("${PULL_API_KEY}", "pull-key-42") + "\n")
    config = load_config(path, environ=ENV)
    assert config.pull == PullSettings(endpoint_id=7, api_key="pull-key-42",
                                       outbox=tmp_path / "inbox")
    assert "pull-key-42" not in repr(config)


def test_neither_folders_nor_pull_is_refused(tmp_path: Path) -> None:
    path = home(tmp_path, PULL_ONLY.split("pull:")[0])
    assert "give folders: (files to push), pull: (jobs to download), or both" in error(path)


def test_folders_without_a_push_endpoint_are_refused_naming_the_key(tmp_path: Path) -> None:
    path, _ = broken(tmp_path, "  endpoint_id: 85\n", "")
    message = error(path)
    assert "exchange.endpoint_id: missing; add 'endpoint_id:' under 'exchange:' (the push " \
        "side, folders:, needs" in message


def test_an_outbox_inside_the_drop_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "drop" / "inbox").mkdir(parents=True)
    path = home(tmp_path, MINIMAL + "pull: {endpoint_id: 7, outbox: ./drop/inbox}\n")
    message = error(path)
    assert "pull.outbox" in message and "inside it" in message


@pytest.mark.parametrize(("categories", "problem"), [
    ("[SEGMENT_POPULATE_DB]", "is not a category whose jobs wait"),
    ("[SEGMENT_EXPORT, segment_export]", "SEGMENT_EXPORT is given twice"),
    ("[]", "expected a list of job categories"),
])
def test_bad_categories_are_refused(tmp_path: Path, categories: str, problem: str) -> None:
    path, _ = broken(tmp_path, "  poll_seconds: 5\n",
                     f"  poll_seconds: 5\n  categories: {categories}\n")
    assert problem in error(path)


def test_categories_are_read_in_any_case(tmp_path: Path) -> None:
    path, _ = broken(tmp_path, "  poll_seconds: 5\n",
                     "  poll_seconds: 5\n  categories: [identity_import]\n")
    assert load_config(path, environ=ENV).matching.categories == ("IDENTITY_IMPORT",)


def test_input_dialects_globally_and_per_segment(tmp_path: Path) -> None:
    path = home(tmp_path, MINIMAL + """\
input:
  encoding: UTF-16
  delimiter: tab
  segments:
    de_customers: {encoding: Windows-1252, delimiter: ";"}
    "45311": {quotechar: "'"}
    plain:
""")
    settings = load_config(path, environ=ENV).input
    assert settings.default == InputDialect(encoding="utf-16", delimiter="\t", quotechar='"')
    # Codec names are normalised; what a segment does not set comes from the global keys.
    assert settings.for_segment("de_customers") == InputDialect(
        encoding="cp1252", delimiter=";", quotechar='"')
    assert settings.for_segment("vip_customers", "45311") == InputDialect(
        encoding="utf-16", delimiter="\t", quotechar="'")
    assert settings.for_segment("plain") == settings.default
    assert settings.for_segment("other", None) == settings.default


@pytest.mark.parametrize(
    ("section", "fragment", "phrase"),
    [
        ("input:\n  encoding: cp1525\n", "cp1525",
         "input.encoding: unknown encoding 'cp1525'; use auto or a Python codec name"),
        ("input:\n  encoding: base64\n", "base64", "input.encoding: 'base64' is not a text"),
        ("input:\n  delimiter: ';;'\n", "';;'",
         "input.delimiter: expected auto, tab or one character"),
        ("input:\n  quotechar: ''\n", "quotechar", "input.quotechar: expected a quote"),
        ("input:\n  delimiter: \"'\"\n  quotechar: \"'\"\n", "quotechar",
         "input.quotechar: \"'\" is also the delimiter"),
        ("input:\n  segments:\n    de: {encodign: cp1252}\n", "encodign",
         "input.segments.de.encodign: unknown key; did you mean 'encoding'?"),
        ("input:\n  segments:\n    de: {encoding: nope}\n", "nope",
         "input.segments.de.encoding: unknown encoding 'nope'"),
    ],
)
def test_bad_input_settings_name_their_key_and_line(
    tmp_path: Path, section: str, fragment: str, phrase: str
) -> None:
    text = MINIMAL + section
    message = error(home(tmp_path, text))
    assert f"line {line_of(text, fragment)}: {phrase}" in message
