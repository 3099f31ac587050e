"""Check that the venv is self-consistent: every requirement of every distribution
installed in it is installed there too, in a version that satisfies it.

``pip check`` would also judge the system's own site-packages (visible through
--system-site-packages), which are not ours to fix.  Names passed to --allow-missing
(torch from JetPack, for one) may be absent but, when present, must still fit.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--allow-missing", nargs="*", default=[], metavar="NAME")
    parser.add_argument(
        "--ignore-requires-of", nargs="*", default=[], metavar="NAME",
        help="distributions installed with --no-deps on purpose (f5-tts: its metadata pulls the training stack)",
    )
    args = parser.parse_args()
    allowed = {canonicalize_name(name) for name in args.allow_missing}
    unchecked = {canonicalize_name(name) for name in args.ignore_requires_of}

    site = Path(sysconfig.get_paths()["purelib"])
    ours = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions(path=[str(site)])}
    problems = []
    for name, dist in sorted(ours.items()):
        if name in unchecked:
            continue
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            wanted = canonicalize_name(req.name)
            have = ours.get(wanted)
            if have is None:
                if wanted not in allowed:
                    problems.append(f"{name} needs {req}, which is not in the bundle")
            elif req.specifier and not req.specifier.contains(have.version, prereleases=True):
                problems.append(f"{name} needs {req}, the bundle has {have.version}")
    for line in problems:
        print(f"check_bundle: {line}", file=sys.stderr)
    print(f"check_bundle: {len(ours)} distributions, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
