"""Run the ``facedistill`` CLI in a subprocess for tests: ``python _cli.py [--no-torch] ARGS...``.

``--no-torch`` makes ``import torch`` fail, as in the slim runtime image; the last stderr line
says whether torch was imported anyway.
"""

import importlib.abc
import sys


class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name == "torchvision":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the runtime image has no torch)",
                                      name=name)
        return None


def main(argv: list) -> int:
    if argv and argv[0] == "--no-torch":
        argv = argv[1:]
        sys.meta_path.insert(0, NoTorch())
    from facedistill.cli.main import app

    try:
        app(args=argv, prog_name="facedistill", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.write(f"\n[torch imported: {'torch' in sys.modules}]\n")
    sys.exit(code)
