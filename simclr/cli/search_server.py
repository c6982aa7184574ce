"""`simclr search-server`: the long-running search service with its JSON API and web page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simclr.cli.common import setup_logging, user_errors
from simclr.cli.options import with_encoder_options
from simclr.embed.encoder import EncoderError, EncoderSpec

Option = typer.Option


@with_encoder_options
def search_server_command(
    index: Annotated[Path, Option("--index", help="Features of the collection (feats.npy; its index feats.faiss "
                                                  "is built as `simclr index` would when missing), or an index "
                                                  "(.faiss: its manifest names the features files, shards too).")
                     ] = Path("feats.npy"),
    host: Annotated[str, Option(help="Address to bind; 0.0.0.0 serves every interface (then give --token).")
                    ] = "127.0.0.1",
    port: Annotated[int, Option(min=1, max=65535, help="HTTP port.")] = 8600,
    max_upload_mb: Annotated[float, Option(min=0.001, help="Largest request body (an uploaded photo), in MB "
                                                           "(2^20 bytes).")] = 20.0,
    token: Annotated[str | None, Option(envvar="SIMCLR_SEARCH_TOKEN", help="Bearer token every route but "
                                                                           "/healthz requires (Authorization: "
                                                                           "Bearer TOKEN, or ?token=TOKEN). "
                                                                           "[default: $SIMCLR_SEARCH_TOKEN, else "
                                                                           "none]")] = None,
    allowed_host: Annotated[list[str] | None, Option(help="A name clients reach the service by (the Host header), "
                                                          "besides localhost, 127.0.0.1, ::1 and --host; repeat "
                                                          "for more. Other names are refused (DNS rebinding). "
                                                          "[default: with --host 0.0.0.0 any name, else none]")
                            ] = None,
    max_query_mpx: Annotated[float, Option(min=0.001, help="Most pixels an uploaded query may decode, in "
                                                           "megapixels (a JPEG counts at the reduced scale it is "
                                                           "decoded at); larger uploads are refused before "
                                                           "decoding. Each decode holds up to ~16 bytes a pixel.")
                             ] = 25.0,
    *,
    encoder: EncoderSpec,
) -> None:
    """Serve searches of an embedded collection over HTTP until Ctrl-C or SIGTERM: a JSON API (POST /search,
    GET /images/ROW, /thumbs/ROW, /info, /healthz, /metrics, POST /reload; its OpenAPI page is /docs) and a web
    page at /.

    The index is read into memory, rows are read from the features files as needed, and the model is loaded once;
    SIGHUP or POST /reload swaps in the index as it is on disk now without dropping requests in flight (replace
    files by renaming new ones over them: a file rewritten in place answers 409 until the reload).
    """
    from simclr.search.api import WILDCARD_HOSTS, ServiceOptions, allowed_hosts_for
    from simclr.search.server import SearchServer
    from simclr.search.service import SearchService

    setup_logging()
    if host in WILDCARD_HOSTS and not token:
        typer.echo(f"warning: --host {host} serves every network interface and there is no authentication: "
                   "anyone who can reach this port can search and read the indexed images (give --token)", err=True)
    options = ServiceOptions(max_upload_bytes=int(max_upload_mb * 2**20), token=token,
                             allowed_hosts=allowed_hosts_for(host, tuple(allowed_host or ())))
    with user_errors(EncoderError):
        server = SearchServer(SearchService(index, encoder, round(max_query_mpx * 1e6)), host, port, options)
        server.run(on_ready=lambda: typer.echo(f"searching {index} at {server.url}/ (API: {server.url}/docs); "
                                               "stop with Ctrl-C or SIGTERM"))
    typer.echo("stopped", err=True)
