"""``llm-proxy``: serve the gateway, or check a config without serving."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from proxy.config import ConfigError, default_config_path

__all__ = ["main"]

logger = logging.getLogger("llm_proxy")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from proxy.app import create_app
    from proxy.runtime import check_config

    config = check_config(args.config)
    logging.basicConfig(level=config.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    app = create_app(config)
    if app.state.runtime_holder.current.keys.open and not _is_loopback(host):
        logger.warning(
            "no client keys configured: binding 127.0.0.1 instead of %s so this is not an open proxy "
            "(set auth.master_key or LLM_PROXY__AUTH__MASTER_KEY to serve other hosts)",
            host,
        )
        host = "127.0.0.1"
    logger.info("llm-proxy listening on http://%s:%d (config %s)", host, port, args.config or default_config_path())
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=config.server.log_level,
        access_log=config.server.access_log,
        timeout_graceful_shutdown=30,
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from proxy.runtime import Runtime, check_config

    config = check_config(args.config)
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
    runtime = Runtime.build(config)
    enabled = [n for n, p in runtime.providers.items() if p.enabled]
    print(f"config OK: {len(config.providers)} provider(s), {len(enabled)} enabled ({', '.join(enabled) or 'none'}), "
          f"{len(runtime.models)} model(s), {len(config.aliases)} alias(es), {len(config.plugins)} plugin(s)")
    return 0


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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"llm-proxy: invalid configuration\n{exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
