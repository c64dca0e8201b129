import json

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

import pool
import pool.contrib.django

# Each outcome of a push, as an HTTP status. The pool never hangs a view: every push ends
# within its timeout in exactly one of these.
STATUS = {pool.ReplyError: 502, pool.PushTimeout: 504, pool.Rejected: 503,
          pool.WorkerLost: 503, pool.NotRunning: 503}
OUTCOME = {pool.ReplyError: "error", pool.PushTimeout: "timeout", pool.Rejected: "rejected",
           pool.WorkerLost: "worker_lost", pool.NotRunning: "not_running"}


@csrf_exempt
@require_POST
def push(request, topic):
    """POST {"event": ..., "payload": {...}} -> {"outcome": "ok", "response": <the reply>}."""
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"error": "the body is not JSON"}, status=400)
    event = data.get("event", "new_msg")
    payload = data.get("payload", {})
    try:
        reply = pool.contrib.django.client().push(topic, event, payload, timeout=5)
    except tuple(STATUS) as exc:
        kind = next(k for k in STATUS if isinstance(exc, k))
        body = {"outcome": OUTCOME[kind], "reason": str(exc)}
        if isinstance(exc, pool.ReplyError):
            body["response"] = exc.response
        return JsonResponse(body, status=STATUS[kind])
    return JsonResponse({"outcome": "ok", "response": reply})
