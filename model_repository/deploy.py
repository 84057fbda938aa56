"""`python -m shoprank.model_repository.deploy` (`make deploy`, `make rollback`): put a new
model or catalog version live while traffic flows, and take it back.

The live repository names its version everywhere: every composing model's
version_policy lists it, and every ensemble step pins it. A deploy

1. builds the new artifacts (a retrained encoder, a rebuilt index, an added, removed or
   re-priced product...) as version N+1 of each composing model, beside version N;
2. loads both versions of each model through Triton's model-control API (explicit mode):
   N keeps serving while N+1 loads and warms up;
3. re-pins the ensembles to N+1 and reloads them: the switch, one ensemble at a time, with
   requests in flight finishing on N;
4. unloads N (its files stay, for a rollback) and records the deploy.

`--rollback` does the same towards the version that was live before. Every step is
checked; a failure before step 3 leaves version N serving as it was. One deploy runs at a
time: it holds a lock file in the repository, and the supervisor does not repair models
while it does (a deploy's loads must not race a repair's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from shoprank import contract
from shoprank.model_repository.build import ServingConfig, build
from shoprank.model_repository.supervisor import deploy_holder

HISTORY_FILE = "DEPLOYS.json"


class DeployError(RuntimeError):
    """The deploy (or rollback) could not be completed; the message says where."""


def _config_path(repo: Path, model: str) -> Path:
    return repo / model / "config.pbtxt"


def read_config(repo: Path, model: str) -> mc.ModelConfig:
    return text_format.Parse(_config_path(repo, model).read_text(), mc.ModelConfig())


def write_config(repo: Path, config: mc.ModelConfig) -> None:
    _config_path(repo, config.name).write_text(text_format.MessageToString(config))


def ensembles(repo: Path) -> list[str]:
    return sorted(
        p.parent.name
        for p in repo.glob("*/config.pbtxt")
        if read_config(repo, p.parent.name).platform == "ensemble"
    )


def composing(repo: Path) -> list[str]:
    return sorted(
        p.parent.name
        for p in repo.glob("*/config.pbtxt")
        if read_config(repo, p.parent.name).platform != "ensemble"
    )


def live_version(repo: Path) -> int:
    """The version the ensembles pin (all of them must agree)."""
    versions = {
        step.model_version
        for name in ensembles(repo)
        for step in read_config(repo, name).ensemble_scheduling.step
    }
    if len(versions) != 1:
        raise DeployError(f"{repo}: the ensembles pin versions {sorted(versions)}, not one")
    return versions.pop()


def history(repo: Path) -> list[dict]:
    path = repo / HISTORY_FILE
    return json.loads(path.read_text()) if path.exists() else []


class Deployer:
    """Loads, switches and unloads versions of a live repository over gRPC."""

    def __init__(self, repo: Path, url: str, admin_key: str = "", timeout_s: float = 300) -> None:
        import tritonclient.grpc as grpcclient

        self.repo = Path(repo)
        self.client = grpcclient.InferenceServerClient(url)
        self.headers = {contract.ADMIN_KEY_GRPC_HEADER: admin_key} if admin_key else None
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.client.close()

    def _set_versions(self, model: str, versions: list[int]) -> None:
        config = read_config(self.repo, model)
        del config.version_policy.specific.versions[:]
        config.version_policy.specific.versions.extend(versions)
        write_config(self.repo, config)

    def _check(self, model: str, versions: list[int]) -> None:
        for version in versions:
            if not self.client.is_model_ready(model, str(version), headers=self.headers):
                raise DeployError(f"{model} version {version} is not ready after loading")

    def _load(self, model: str) -> None:
        from tritonclient.utils import InferenceServerException

        try:
            self.client.load_model(model, headers=self.headers, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise DeployError(f"loading {model} failed: {exc.message()}") from None

    def switch(self, target: int) -> int:
        """Make `target` the live version of every model; return the one it replaced.

        Loading an ensemble (re)loads the models it uses, so: both versions in every
        model's policy and the ensembles pinned to `target`, then one load per ensemble
        (the old version keeps serving until the new one is up), then the old version out.
        """
        current = live_version(self.repo)
        if current == target:
            raise DeployError(f"version {target} is already live")
        models = composing(self.repo)
        missing = [m for m in models if not (self.repo / m / str(target)).is_dir()]
        if missing:
            raise DeployError(f"version {target} has no folder for {', '.join(missing)}")
        both = sorted({current, target})
        saved = {
            m: _config_path(self.repo, m).read_text() for m in [*models, *ensembles(self.repo)]
        }
        try:
            for model in models:
                self._set_versions(model, both)
            for name in ensembles(self.repo):
                config = read_config(self.repo, name)
                for step in config.ensemble_scheduling.step:
                    step.model_version = target
                write_config(self.repo, config)
            for name in ensembles(self.repo):  # the switch
                self._load(name)
            for model in models:
                self._check(model, [target])
        except Exception:
            # Triton keeps what it had when a load fails; the files must say the same.
            for model, text in saved.items():
                _config_path(self.repo, model).write_text(text)
            raise
        for model in models:  # the old version goes; its files stay for a rollback
            self._set_versions(model, [target])
            self._load(model)
        return current


def live_serving(repo: Path, version: int) -> ServingConfig:
    """The serving settings the live repository was built with (its BUILD.json; the
    defaults where it records none), for `version`."""
    build_file = repo / contract.REPOSITORY_BUILD_FILE
    recorded = json.loads(build_file.read_text()).get("serving", {}) if build_file.exists() else {}
    known = {k: v for k, v in recorded.items() if k in ServingConfig.__dataclass_fields__}
    return ServingConfig(**{**known, "version": version})


def stage(source: contract.ArtifactPaths, repo: Path, version: int) -> None:
    """Build `source`'s artifacts as `version` of every composing model of `repo`, with the
    live repository's serving settings."""
    with tempfile.TemporaryDirectory(prefix="shoprank-deploy-") as tmp:
        serving = live_serving(repo, version)
        staged = build(source, serving, repo=Path(tmp) / "repo")
        for model in composing(staged):
            if not (repo / model).is_dir():
                raise DeployError(f"the live repository has no model {model}")
            target = repo / model / str(version)
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(staged / model / str(version)), target)
            # Warm-up files and parameters follow the new build. Files outside the version
            # folders are rewritten only when they change: Triton reloads every loaded
            # version of a model whose other files changed, and a reload of the live
            # version costs a second model load on the cores that serve the traffic.
            warmup = staged / model / "warmup"
            if warmup.is_dir() and not same_files(warmup, repo / model / "warmup"):
                shutil.rmtree(repo / model / "warmup", ignore_errors=True)
                shutil.copytree(warmup, repo / model / "warmup")
            new = read_config(staged, model)
            del new.version_policy.specific.versions[:]
            new.version_policy.specific.versions.append(live_version(repo))
            if text_format.MessageToString(new) != _config_path(repo, model).read_text():
                write_config(repo, new)


def same_files(a: Path, b: Path) -> bool:
    """Whether two folders hold the same files with the same bytes."""
    if not b.is_dir():
        return False
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    if names != sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


@contextlib.contextmanager
def locked(repo: Path) -> Iterator[None]:
    """One deploy at a time per repository; the supervisor holds its repairs meanwhile."""
    path = repo / contract.DEPLOY_LOCK_FILE
    holder = deploy_holder(repo)
    if holder is not None and holder != os.getpid():
        raise DeployError(f"another deploy (pid {holder}) is changing {repo}")
    path.write_text(str(os.getpid()))  # a stale lock (its process gone) is taken over
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def deploy(source: contract.ArtifactPaths, repo: Path, url: str, admin_key: str = "") -> dict:
    """Stage `source` as the next version and switch to it (see the module docstring)."""
    versions = [
        int(p.name) for m in composing(repo) for p in (repo / m).iterdir() if p.name.isdigit()
    ]
    new = max(versions) + 1
    started = time.perf_counter()
    with locked(repo):
        stage(source, repo, new)
        deployer = Deployer(repo, url, admin_key)
        try:
            old = deployer.switch(new)
        finally:
            deployer.close()
    record = {
        "version": new,
        "replaced": old,
        "source": str(source.root.resolve()),
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (repo / HISTORY_FILE).write_text(json.dumps([*history(repo), record], indent=2))
    return record


def rollback(repo: Path, url: str, admin_key: str = "") -> dict:
    """Switch back to the version the last deploy replaced."""
    current = live_version(repo)
    past = [r for r in history(repo) if r["version"] == current]
    if not past:
        raise DeployError(f"no deploy of version {current} on record: nothing to roll back to")
    target = past[-1]["replaced"]
    started = time.perf_counter()
    with locked(repo):
        deployer = Deployer(repo, url, admin_key)
        try:
            deployer.switch(target)
        finally:
            deployer.close()
    record = {
        "version": target,
        "replaced": current,
        "rollback": True,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (repo / HISTORY_FILE).write_text(json.dumps([*history(repo), record], indent=2))
    return record


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m shoprank.model_repository.deploy", description=__doc__
    )
    parser.add_argument(
        "--out", type=Path, default=contract.DEFAULT_ARTIFACTS, help="new artifacts"
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=contract.ArtifactPaths(contract.DEFAULT_ARTIFACTS).repository("cpu"),
        help="the live repository (%(default)s)",
    )
    parser.add_argument("--url", default=contract.DEFAULT_GRPC_URL, help="gRPC host:port")
    parser.add_argument("--admin-key-file", type=Path, default=None)
    parser.add_argument("--rollback", action="store_true", help="back to the previous version")
    args = parser.parse_args(argv)
    key = args.admin_key_file.read_text().strip() if args.admin_key_file else ""
    try:
        if args.rollback:
            record = rollback(args.repository, args.url, key)
        else:
            record = deploy(contract.ArtifactPaths(args.out), args.repository, args.url, key)
    except (DeployError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    action = "rolled back" if record.get("rollback") else "deployed"
    live, was = record["version"], record["replaced"]
    print(f"{action}: version {live} live (was {was}), {record['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
