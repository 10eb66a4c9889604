"""The ``fcn-label`` command line: thin wrappers over the library modules.

Each verb lives in its own module and registers itself on :data:`app`.
"""

from __future__ import annotations

from ._common import app, console, run_cli  # noqa: F401
from . import predict as _predict  # noqa: F401,E402  (registers commands)
from . import evaluate as _evaluate  # noqa: F401,E402
from . import finetune as _finetune  # noqa: F401,E402
from . import models as _models  # noqa: F401,E402
from . import review as _review  # noqa: F401,E402
from . import select as _select  # noqa: F401,E402
from . import export as _export  # noqa: F401,E402
from . import serve as _serve  # noqa: F401,E402


def main() -> None:
    run_cli()


if __name__ == "__main__":
    main()
