"""Handlers the pool's workers call for each inbound message of their channel.

`manage.py pool start` has set Django up before forking the workers, so models import at the
top as usual. @db_handler drops stale database connections around each call, as Django does
around a request.
"""
import base64

from pool.contrib.django import db_handler

from .models import Message


@db_handler
def store(message):
    body = message.payload
    if isinstance(body, bytes):  # a binary frame
        body = {"binary": base64.b64encode(body).decode()}
    Message.objects.create(topic=message.topic, event=message.event, body=body)
