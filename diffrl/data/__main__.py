"""Command line for local datasets: ``python -m diffrl.data make|list|info|delete`` (also ``diffrl-data``).

Examples::

    python -m diffrl.data list                                  # local datasets and registered generators
    python -m diffrl.data make diffrl/pendulum/medium-v0        # build a registered dataset
    python -m diffrl.data make my/pendulum/random-v0 --env Pendulum-v1 --policy random --num-steps 10000 \\
        --ref-min -1237.69 --ref-max -149.81
    python -m diffrl.data make my/hopper/mine-v0 --env Hopper-v5 --policy mypkg.policies:expert --num-episodes 10
    python -m diffrl.data info diffrl/pendulum/medium-v0
    python -m diffrl.data delete my/pendulum/random-v0

Datasets live in ``$MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
from collections.abc import Sequence

__all__ = ["main"]

# the `make` flags whose destinations are make_dataset keywords, passed on unchanged
_MAKE_DATASET_FLAGS = (
    "num_steps",
    "num_episodes",
    "max_episode_steps",
    "ref_min_score",
    "ref_max_score",
    "algorithm_name",
    "author",
    "description",
    "overwrite",
)


def _load_policy(spec: str):
    if spec == "random":
        return spec
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"--policy must be 'random' or 'package.module:attr' (a callable obs -> action); got {spec!r}."
        )
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _make(args: argparse.Namespace) -> int:
    from diffrl import registry

    if args.env is None:
        try:
            generator = registry.get("dataset", args.dataset_id)
        except LookupError as err:
            raise ValueError(
                f"{err} To record a new dataset, pass --env, --policy and --num-steps or --num-episodes."
            ) from err
        options = {"overwrite": args.overwrite}
        if args.seed is not None:
            options["seed"] = args.seed
        dataset = generator(**options)
    else:
        from diffrl.data.writing import make_dataset

        if (args.num_steps is None) == (args.num_episodes is None):
            raise ValueError("pass exactly one of --num-steps and --num-episodes with --env.")
        for flag, value in (("--num-steps", args.num_steps), ("--num-episodes", args.num_episodes)):
            if value is not None and value <= 0:
                raise ValueError(f"{flag} must be a positive number of {flag[6:]} to record, got {value}.")
        options = {name: getattr(args, name) for name in _MAKE_DATASET_FLAGS}
        dataset = make_dataset(
            args.env, _load_policy(args.policy), args.dataset_id, seed=args.seed or 0, progress=True, **options
        )
    print(f"{args.dataset_id}: {dataset.total_episodes} episodes, {dataset.total_steps} steps")
    return 0


def _list(args: argparse.Namespace) -> int:
    import minari

    from diffrl import registry
    from diffrl.data.paths import datasets_root, local_dataset_ids

    local = local_dataset_ids()
    print(f"local datasets in {datasets_root()}:")
    metadata = minari.list_local_datasets() if local else {}
    for dataset_id in local:
        meta = metadata.get(dataset_id)
        summary = f"{meta['total_episodes']} episodes, {meta['total_steps']} steps" if meta else "UNREADABLE"
        print(f"  {dataset_id:45s} {summary}")
    if not local:
        print("  (none)")
    print("registered generators (python -m diffrl.data make <id>):")
    for name in registry.names("dataset"):
        print(f"  {name:45s} {'built' if name in local else 'not built'}")
    return 0


def _info(args: argparse.Namespace) -> int:
    import numpy as np

    from diffrl.data.paths import dataset_dir
    from diffrl.data.reading import DatasetNotFoundError, read_dataset
    from diffrl.data.returns import episode_returns

    path = dataset_dir(args.dataset_id)
    if not path.exists():
        raise DatasetNotFoundError(f"no local dataset {args.dataset_id!r} (looked in {path}); see `list`.")
    raw = read_dataset(args.dataset_id, path)
    returns = episode_returns(raw.rewards, raw.episode_lengths)
    meta = raw.metadata
    data = raw.transitions
    rows = [
        ("dataset id", raw.dataset_id),
        ("path", str(path)),
        ("env", raw.env_id),
        ("episodes / steps", f"{len(raw.episode_lengths)} / {int(raw.episode_lengths.sum())}"),
        ("observation / action size", f"{data['observation'].shape[-1]} / {data['action'].shape[-1]}"),
        ("episode return mean / min / max", f"{returns.mean():.2f} / {returns.min():.2f} / {returns.max():.2f}"),
        (
            "terminated / truncated steps",
            f"{int(data['next', 'terminated'].sum())} / {int(data['next', 'truncated'].sum())}",
        ),
        ("ref_min_score / ref_max_score", f"{meta.get('ref_min_score')} / {meta.get('ref_max_score')}"),
        ("algorithm", meta.get("algorithm_name")),
        ("author", ", ".join(sorted(meta.get("author", []))) or None),
        ("description", meta.get("description")),
        ("minari version", meta.get("minari_version")),
    ]
    if meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None:
        lo, hi = float(meta["ref_min_score"]), float(meta["ref_max_score"])
        rows.insert(6, ("normalised score of the data", f"{100 * (np.mean(returns) - lo) / (hi - lo):.1f}"))
    for key, value in rows:
        print(f"{key:32s} {value}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from diffrl.data.paths import dataset_dir, local_dataset_ids

    path = dataset_dir(args.dataset_id)
    if not path.exists():
        raise FileNotFoundError(
            f"no local dataset {args.dataset_id!r} at {path}. Local datasets: {local_dataset_ids() or 'none'}."
        )
    shutil.rmtree(path)
    print(f"deleted {args.dataset_id} ({path})")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diffrl.data",
        description="Make, list, inspect and delete local Minari datasets (in $MINARI_DATASETS_PATH).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make", help="build a registered dataset, or record one from --env and --policy")
    make.add_argument("dataset_id", help="Minari id, e.g. diffrl/pendulum/medium-v0 or me/pendulum/random-v0")
    make.add_argument("--env", help="gymnasium env id to record in (omit to build a registered generator)")
    make.add_argument("--policy", default="random", help="'random' or 'package.module:attr' (callable obs -> action)")
    make.add_argument("--num-steps", type=int)
    make.add_argument("--num-episodes", type=int)
    make.add_argument("--seed", type=int)
    make.add_argument("--max-episode-steps", type=int)
    make.add_argument(
        "--ref-min", type=float, dest="ref_min_score", metavar="REF_MIN", help="reference return of a random policy"
    )
    make.add_argument(
        "--ref-max", type=float, dest="ref_max_score", metavar="REF_MAX", help="reference return of an expert policy"
    )
    make.add_argument("--algorithm-name")
    make.add_argument("--author", default="diffrl")
    make.add_argument("--description")
    make.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    make.set_defaults(run=_make)
    listing = commands.add_parser("list", help="local datasets and registered generators")
    listing.set_defaults(run=_list)
    info = commands.add_parser("info", help="metadata and statistics of a local dataset")
    info.add_argument("dataset_id")
    info.set_defaults(run=_info)
    delete = commands.add_parser("delete", help="delete a local dataset")
    delete.add_argument("dataset_id")
    delete.set_defaults(run=_delete)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (an error is printed to stderr as one message, exit code 1).

    Example:
        >>> import tempfile
        >>> from diffrl.data.paths import datasets_path_override
        >>> with datasets_path_override(tempfile.mkdtemp()):
        ...     main(["delete", "nobody/nothing-v0"])  # prints "error: no local dataset ..." to stderr
        1
    """
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, LookupError, OSError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
