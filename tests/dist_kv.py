"""A stand-in for a worker's dist kvstore, for tests that run no servers."""


class RecordingDistKV:
    """Records what ``KVStore.set_optimizer`` would send to the servers of a ``dist_sync``
    kvstore (``_send_command_to_servers(head, body)``), instead of sending it."""
    type = 'dist_sync'

    def __init__(self):
        self.sent = []

    def _send_command_to_servers(self, head, body):
        self.sent.append((head, body))
