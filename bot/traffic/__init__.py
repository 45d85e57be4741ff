"""Traffic: the only code that talks to a proxy. `haproxy.py` implements `ports.Router` through
HAProxy's runtime API (a unix socket or a loopback TCP address, plain `socket`);
`haproxy_config.py` writes the `haproxy.cfg` that the router expects (`python -m bot
proxy-config`). It imports the domain and the ports, nothing else of the bot."""
