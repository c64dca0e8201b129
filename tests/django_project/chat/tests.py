"""Django tests of the view that pushes through the pool. They need a running pool:
tests/test_django.py starts a Phoenix test server and `manage.py pool start`, then runs
`manage.py test chat.tests...` with PHOENIX_URL and POOL_RUN_DIR pointing at them."""
import json
import os
import unittest

from django.test import SimpleTestCase

import pool.contrib.django

RUNNING = bool(os.environ.get("PHOENIX_URL") and os.environ.get("POOL_RUN_DIR")
               and os.path.isdir(os.environ["POOL_RUN_DIR"]))


@unittest.skipUnless(RUNNING, "needs a running pool (tests/test_django.py starts one)")
class PushViewTests(SimpleTestCase):
    def post(self, topic, event, payload):
        return self.client.post(f"/push/{topic}/", {"event": event, "payload": payload},
                                content_type="application/json")

    def assert_echo(self, payload):
        response = self.post("room:lobby", "echo", payload)
        self.assertEqual(response.status_code, 200, response.content)
        self.assertEqual(response.json(), {"outcome": "ok", "response": payload})

    def test_view_pushes_and_returns_the_reply(self):
        self.assert_echo({"body": "hi", "n": 1})
        response = self.post("room:lobby", "error", {"why": "nope"})
        self.assertEqual(response.status_code, 502)
        self.assertEqual(response.json()["outcome"], "error")
        self.assertEqual(response.json()["response"], {"why": "nope"})
        response = self.post("room:nowhere", "echo", {})
        self.assertEqual(response.status_code, 503)
        self.assertEqual(response.json()["outcome"], "rejected")
        self.assertIs(pool.contrib.django.client(), pool.contrib.django.client())

    def test_a_child_forked_after_first_use_pushes_through_its_own_client(self):
        parent_client = pool.contrib.django.client()
        self.assert_echo({"who": "parent", "n": 0})  # the parent's sockets are open now
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: push through the view while the parent does too
            code = 1
            try:
                os.close(rfd)
                result = {"pid": os.getpid(),
                          "own_client": pool.contrib.django.client() is not parent_client,
                          "replies": []}
                for n in range(20):
                    response = self.post("room:lobby", "echo", {"who": "child", "n": n})
                    result["replies"].append([response.status_code, response.json()])
                os.write(wfd, json.dumps(result).encode())
                code = 0
            except BaseException as exc:  # report anything, never run the parent's teardown
                os.write(wfd, json.dumps({"error": repr(exc)}).encode())
            finally:
                os._exit(code)
        os.close(wfd)
        for n in range(20):  # concurrently: a shared socket would mix up the replies
            self.assert_echo({"who": "parent", "n": n})
        chunks = []
        while True:
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(rfd)
        _, status = os.waitpid(pid, 0)
        result = json.loads(b"".join(chunks) or b"{}")
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, result)
        self.assertTrue(result["own_client"], "the child reused the parent's Client object")
        self.assertEqual(result["replies"],
                         [[200, {"outcome": "ok", "response": {"who": "child", "n": n}}]
                          for n in range(20)])
        self.assertIs(pool.contrib.django.client(), parent_client)
        self.assert_echo({"who": "parent", "n": "after"})
