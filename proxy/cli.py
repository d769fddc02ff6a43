"""``llm-proxy``: serve the gateway, or check a config without serving."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import sys
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from llm_proxy.core.config import ConfigError, default_config_path

if TYPE_CHECKING:
    import uvicorn

    from llm_proxy.core.drain import Drain
    from llm_proxy.runtime.connections import ConnectionGuard

__all__ = ["main"]

logger = logging.getLogger("llm_proxy")

_HEAD_SLACK = 16 * 1024  # a request head's line and separators, beyond its headers' names and values


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_CLOSE_WAIT = 5  # s uvicorn waits, once the gateway has drained, for what is left (admin, health) before cancelling


def _graceful_server(config: uvicorn.Config, guard: ConnectionGuard, drain: Drain, grace: float) -> uvicorn.Server:
    """uvicorn's server, except that SIGTERM/SIGINT drains the gateway before uvicorn closes.

    uvicorn closes its listener at once and, after its timeout, cancels what is left: a load
    balancer sees refused connections instead of a readiness that turns false, and a cut
    stream ends silently (logged as a success, a traceback each). Here the first signal starts
    ``Drain.shutdown`` (new API requests refused, /health not ready, the requests in flight
    get ``grace`` seconds, then the rest end with an error event); a second signal ends the
    grace at once; only when the drain is done is the signal handed to uvicorn."""
    from llm_proxy.runtime.connections import GuardedServer

    class Server(GuardedServer):
        draining: asyncio.Task[None] | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.started or self.should_exit:  # starting, or already closing: uvicorn's own handling
                super().handle_exit(sig, frame)
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on the serving loop
                super().handle_exit(sig, frame)
                return
            loop.call_soon_threadsafe(self._on_signal, sig)

        def _on_signal(self, sig: int) -> None:
            if self.draining is None:
                self.draining = asyncio.create_task(self._drain(sig))
            else:
                logger.info("second signal: ending the shutdown grace now")
                drain.hurry()

        async def _drain(self, sig: int) -> None:
            try:
                await drain.shutdown(grace)
            except Exception:
                logger.exception("graceful shutdown failed; closing now")
            finally:
                super().handle_exit(sig, None)

    return Server(config, guard)


def _serve(args: argparse.Namespace) -> int:
    from llm_proxy.app import create_app
    from llm_proxy.runtime.build import check_config
    from llm_proxy.runtime.connections import (
        ConnectionGuard,
        default_limits,
        guarded_config,
        raise_open_file_limit,
    )
    from llm_proxy.runtime.holder import RuntimeHolder

    source = args.config or default_config_path()
    config = check_config(source)
    logging.basicConfig(level=config.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    app = create_app(config, source=source)  # what to serve, and the file SIGHUP and the reload API re-read
    holder: RuntimeHolder = app.state.runtime_holder
    if holder.current.keys.open and not _is_loopback(host):
        logger.warning(
            "no client keys configured: binding 127.0.0.1 instead of %s so this is not an open proxy "
            "(set auth.master_key or LLM_PROXY__AUTH__MASTER_KEY to serve other hosts)",
            host,
        )
        host = "127.0.0.1"
    logger.info("llm-proxy listening on http://%s:%d (config %s)", host, port, source)
    # X-Forwarded-For/-Proto only from the configured proxies: uvicorn's default trusts 127.0.0.1,
    # which lets anything on the host (or a proxy that passes the header on) choose its address
    proxies = list(config.server.forwarded_allow_ips)
    if proxies:
        logger.info("trusting X-Forwarded-For and X-Forwarded-Proto from %s", ", ".join(proxies))
    open_files, hard = raise_open_file_limit()
    max_connections, accept_batch = default_limits(open_files)
    max_connections = config.server.max_connections or max_connections
    guard = ConnectionGuard(header_timeout=config.server.header_timeout, body_timeout=config.server.body_timeout,
                            max_connections=max_connections)
    logger.info("open-file limit %d (hard %d): at most %d client connections, request head within %gs, body within %gs",
                open_files, hard, max_connections, guard.header_timeout, guard.body_timeout)
    server = _graceful_server(guarded_config(
        app,
        guard=guard,
        accept_batch=accept_batch,
        host=host,
        port=port,
        log_level=config.server.log_level,
        access_log=config.server.access_log,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
        timeout_keep_alive=config.server.keep_alive_timeout,
        timeout_graceful_shutdown=_CLOSE_WAIT,
        # h11 only (httptools has no such limit): what it buffers of a request head. Above the app's
        # own header limit, so an over-long head is the app's 431; h11's answer to this one is a 400.
        h11_max_incomplete_event_size=int(config.server.max_header_kb * 1024) + _HEAD_SLACK,
    ), guard, app.state.drain, config.server.shutdown_grace)
    try:
        server.run()
    except KeyboardInterrupt:  # a signal uvicorn re-raises once it has closed (as uvicorn.run does)
        pass
    return 0 if server.started else 3  # 3: uvicorn's startup failure


def _check(args: argparse.Namespace) -> int:
    from llm_proxy.runtime.build import build_runtime, check_config

    config = check_config(args.config)
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
    runtime = build_runtime(config)
    enabled = [n for n, p in runtime.upstreams.providers.items() if p.enabled]
    print(f"config OK: {len(config.providers)} provider(s), {len(enabled)} enabled ({', '.join(enabled) or 'none'}), "
          f"{len(runtime.routes.models)} model(s), {len(config.aliases)} alias(es), {len(config.plugins)} plugin(s)")
    return 0


def _reset_admin(args: argparse.Namespace) -> int:
    from llm_proxy.accounts.users import DEFAULT_ADMIN, DEFAULT_ADMIN_PASSWORD, UserStore
    from llm_proxy.core.config import load_config

    path = load_config(args.config).database.path
    users = UserStore(path)
    try:
        done = users.reset_admin()
    finally:
        users.close()
    what = "re-created" if done == "created" else "reset"
    print(f"{what} user {DEFAULT_ADMIN!r} in {path}: password {DEFAULT_ADMIN_PASSWORD!r}, role admin, enabled; "
          "it must be changed at the next login, and the user's sessions are signed out")
    return 0


def _keys(args: argparse.Namespace) -> int:
    """``keys create|list|revoke`` on the database named by the config; a running gateway sees it within ~2 s."""
    import json

    from llm_proxy.accounts.client_keys import ClientStore, ClientStoreError
    from llm_proxy.core.config import load_config

    store = ClientStore(load_config(args.config).database.path)
    try:
        if args.keys_command == "create":
            given = {"allowed_models": args.models and [m for m in args.models.split(",") if m.strip()],
                     "rpm": args.rpm, "tpm": args.tpm, "max_concurrent": args.max_concurrent,
                     "budget_day_usd": args.budget_day, "budget_month_usd": args.budget_month,
                     "budget_total_usd": args.budget_total, "expires_at": args.expires,
                     "tags": dict(t.partition("=")[::2] for t in args.tag) if args.tag else None}
            if any("=" not in t for t in args.tag or ()):
                raise ClientStoreError(400, "--tag takes KEY=VALUE")
            client_id = None
            if args.client:
                client_id = store.client_id(args.client) or store.create_client(args.client)["id"]
            secret, key = store.create_key(args.name, client_id, {k: v for k, v in given.items() if v is not None})
            print(secret)
            print(f"created key {key.id} {key.name!r} (log id {key.log_id}): copy it now, it is not shown again",
                  file=sys.stderr)
        elif args.keys_command == "list":
            keys = [k.public() for k in store.list_keys()]
            if args.json:
                print(json.dumps(keys, indent=2))
            for k in [] if args.json else keys:
                limits = " ".join(f"{n}={k[n]}" for n in ("rpm", "tpm", "max_concurrent", "budget_day_usd",
                                                          "budget_month_usd", "budget_total_usd") if k[n] is not None)
                print(f"{k['id']:>4}  {k['prefix']}...  {k['status']:<8}  {k['name']}  "
                      f"models={','.join(k['allowed_models'] or ['*'])} {limits} expires={k['expires_at'] or '-'}")
        else:
            key = store.revoke_key(args.id)
            print(f"revoked key {key.id} {key.name!r}")
    except ClientStoreError as exc:
        print(f"llm-proxy: {exc.message}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="create, list or revoke client API keys").add_subparsers(
        dest="keys_command", required=True)
    create = keys.add_parser("create", help="make a key and print it (once)")
    create.add_argument("--name", required=True)
    create.add_argument("--client", help="client name (created if missing)")
    create.add_argument("--models", help="allowed models or groups, comma-separated (default: all)")
    for flag in ("--rpm", "--tpm", "--max-concurrent"):
        create.add_argument(flag, type=int)
    for flag in ("--budget-day", "--budget-month", "--budget-total"):
        create.add_argument(flag, type=float, help="USD")
    create.add_argument("--expires", help="ISO 8601 time (UTC unless it says otherwise)")
    create.add_argument("--tag", action="append", help="KEY=VALUE, repeatable; written to the request log")
    listing = keys.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--json", action="store_true")
    revoke = keys.add_parser("revoke", help="revoke a key now")
    revoke.add_argument("id", type=int)
    for command in (create, listing, revoke):
        command.add_argument("--config", help="config file (default: $LLM_PROXY_CONFIG or ./config.yaml)")
        command.set_defaults(func=_keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-proxy", description="An LLM gateway with an OpenAI-compatible API.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="config file (default: $LLM_PROXY_CONFIG or ./config.yaml)")
    serve.add_argument("--host", help="bind address (default: server.host)")
    serve.add_argument("--port", type=int, help="port (default: server.port)")
    serve.set_defaults(func=_serve)
    check = sub.add_parser("check-config", help="validate a config and exit")
    check.add_argument("--config", help="config file (default: $LLM_PROXY_CONFIG or ./config.yaml)")
    check.set_defaults(func=_check)
    reset = sub.add_parser("reset-admin", help="reset the dashboard user 'admin' to the default password")
    reset.add_argument("--config", help="config file (default: $LLM_PROXY_CONFIG or ./config.yaml)")
    reset.set_defaults(func=_reset_admin)
    _keys_parser(sub)
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        return command(args)
    except ConfigError as exc:
        print(f"llm-proxy: invalid configuration\n{exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
