from django.db import models


class Message(models.Model):
    """One inbound broadcast, stored by chat.handlers.store in the pool's worker."""

    topic = models.CharField(max_length=200)
    event = models.CharField(max_length=200)
    body = models.JSONField(default=dict)
    received_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"{self.topic} {self.event}"
