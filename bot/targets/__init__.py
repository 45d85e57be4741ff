"""Deploy targets: the only code that talks to Docker. Each module implements `ports.Target`
for one kind of engine (one host, Swarm) and checks its own config keys; bot/plugins.py
registers them."""
