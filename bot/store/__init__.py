"""The store: the only code that talks to Redis (keys, the Store, the connection, durability).
Everything the bot knows lives here, so a restarted bot or a second replica carries on."""
