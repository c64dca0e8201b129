"""Settings of the example project: a chat app that pushes to Phoenix and stores broadcasts.

Per-host values come from the environment (the tests point them at a test server and a temp
dir): PHOENIX_URL (the Phoenix socket endpoint), POOL_RUN_DIR (the pool's sockets) and
CHAT_DB (the SQLite file; default: a file in the temp directory).
"""
import os
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "example-project-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "pool.contrib.django",
    "chat",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "project.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("CHAT_DB") or os.path.join(tempfile.gettempdir(), "pool-chat.sqlite3"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

# The pool: the same keys as pool.toml (docs/configuration.md). ${VAR} reads the environment.
# The timings are short so the tests run fast; production keeps the defaults.
POOL = {
    "pool": {
        "name": "chat",
        "url": "${PHOENIX_URL}",
        "run_dir": "${POOL_RUN_DIR}",
        "heartbeat_interval": 1.0,
        "send_timeout": 1.0,
        "connect_timeout": 1.0,
        "push_timeout": 5.0,
        "ack_interval": 0.2,
        "kill_timeout": 1.0,
        "min_uptime": 0.5,
        "backoff_initial": 0.05,
        "shutdown_timeout": 2.0,
    },
    "channels": [
        {"topic": "room:lobby", "handler": "chat.handlers:store"},
        {"topic": "room:ops"},
    ],
}
