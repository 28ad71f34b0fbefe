"""The reply dispatcher: `message.send` commands from Kafka -> a recorded chat message -> one
provider call -> its outcome, each executed once (see dispatcher.py for the state machine)."""
