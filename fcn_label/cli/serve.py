"""`fcn-label serve`: the Label Studio ML backend (logic in :mod:`fcn_label.serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._common import app, console, fail

EPILOG = """\
[bold]Example[/]

  LABEL_STUDIO_URL=http://localhost:8080 LABEL_STUDIO_API_KEY=TOKEN fcn-label serve --port 9090

then in Label Studio: project Settings > Model > Connect Model, URL http://localhost:9090. The project's
labelling config needs a BrushLabels over an Image whose labels are the model's classes (the config
`fcn-label export --format labelstudio` writes). See docs/labelstudio.md.
"""


@app.command("serve", epilog=EPILOG)
def serve(
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Model to serve: a shipped model's name or an "
                                          "fcn-label checkpoint (default: the shipped CamVid model)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 lets other machines in "
                             "(then use --basic-auth)."),
    port: int = typer.Option(9090, "--port", "-p", help="Port to listen on."),
    state: Path = typer.Option(Path("fcn-label-serve"), "--state", help="Folder for the weights trained from "
                               "corrections (every version is kept), current.json (the one served) and each "
                               "training round's data and log."),
    label_studio_url: Optional[str] = typer.Option(None, "--label-studio-url", envvar="LABEL_STUDIO_URL",
                                                   help="Label Studio's address, for uploaded and local-files images "
                                                   "and for reading annotations [env LABEL_STUDIO_URL]."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LABEL_STUDIO_API_KEY", show_default=False,
                                          help="Label Studio API token (legacy or personal access token) "
                                          "[env LABEL_STUDIO_API_KEY]; default: the one Label Studio sends on /setup."),
    allow_host: List[str] = typer.Option([], "--allow-host", help="Also fetch plain http(s) image URLs from this host "
                                         "(repeatable). By default only Label Studio's own host and presigned "
                                         "cloud-storage URLs to public addresses are fetched."),
    basic_auth: Optional[str] = typer.Option(None, "--basic-auth", envvar="FCN_LABEL_SERVE_BASIC_AUTH",
                                             show_default=False, help="USER:PASSWORD that every request must carry "
                                             "(Label Studio: Connect Model > Basic Authentication) "
                                             "[env FCN_LABEL_SERVE_BASIC_AUTH]."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (prediction and training)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Images per forward pass "
                                             "(same-size images of one request share batches; default as predict)."),
    train: bool = typer.Option(True, "--train/--no-train", help="Learn from submitted annotations (webhook or "
                               "Label Studio's Start Training)."),
    train_epochs: int = typer.Option(50, "--train-epochs", min=1, help="Epochs of each training round."),
    train_lr: float = typer.Option(2e-4, "--train-lr", min=0.0, help="Learning rate of each round: a tenth of the "
                                   "finetune preset's, which loses accuracy on a few images (docs/labelstudio.md)."),
    freeze: bool = typer.Option(False, "--train-freeze/--train-all", help="--train-freeze trains only the layers "
                                "above the backbone and keeps BatchNorm statistics (measured to lose; see the docs)."),
    max_predict: int = typer.Option(50, "--max-predict", min=1, help="Predict calls held at once; more are "
                                    "answered 503."),
    max_image_bytes: int = typer.Option(50 * 1024 * 1024, "--max-image-bytes", min=1, help="Largest image file fetched."),
    max_pixels: int = typer.Option(50_000_000, "--max-pixels", min=1, help="Largest image (width x height) decoded."),
    max_body: int = typer.Option(64 * 1024 * 1024, "--max-body", min=1, help="Largest request body in bytes."),
) -> None:
    """Serve a model to Label Studio as an ML backend: brush-mask predictions, training from corrections."""
    from ..export.labelstudio import brush
    from ..serve import Backend, ImageFetcher, Learner, ModelStore, Recipe, make_server

    brush()  # label-studio-sdk's brush RLE (the export extra): missing, one line now rather than a 500 later

    if basic_auth is not None and ":" not in basic_auth:
        raise fail("--basic-auth: expected USER:PASSWORD")

    def log(msg: str) -> None:
        console.print(msg, soft_wrap=True, markup=False, highlight=False)

    state.mkdir(parents=True, exist_ok=True)
    store = ModelStore(state, weights, device=device, batch_size=batch_size, log=log)
    hosts = list(allow_host)
    fetcher = ImageFetcher(label_studio_url, api_key, hosts, max_bytes=max_image_bytes, max_pixels=max_pixels,
                           tmpdir=state)
    learner = Learner(store, fetcher, Recipe(epochs=train_epochs, lr=train_lr, freeze_backbone=freeze,
                                                device=device), log=log) if train else None
    backend = Backend(store, fetcher, learner, max_predict=max_predict, log=log)
    try:
        srv = make_server(backend, host, port, basic_auth, max_body=max_body, log=log)
    except OSError as e:
        raise fail(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port") from None
    where = f"http://{srv.server_address[0]}:{srv.server_address[1]}"
    log(f"serving {store.served.version} ({len(store.served.classes)} classes) at {where}"
        + (f"; Label Studio {label_studio_url}" if label_studio_url else "; LABEL_STUDIO_URL not set: only "
           "allow-listed http(s) images") + ("; basic auth on" if basic_auth else "") + "; Ctrl+C stops")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        log("stopping")
    finally:
        srv.server_close()
        backend.close()
