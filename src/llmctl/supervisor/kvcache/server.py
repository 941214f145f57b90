"""llama-server's slot endpoints, as keep_kv uses them: list, save, restore.

`GET /slots` (each slot's `id`, `n_prompt_tokens`, `is_processing`), `POST /slots/N?action=save`
and `?action=restore` with `{"filename": ...}` relative to `--slot-save-path` (answers
`n_saved`/`n_written`, `n_restored`). Every call is bounded by its timeout and raises only
SlotError: `gone` when the server went away, else an error answer or no answer in time.
"""

from __future__ import annotations

from typing import Any

from llmctl.supervisor.kvcache.decide import SlotTokens


class SlotError(Exception):
    """A /slots call failed: the server answered an error, died (`gone`), or did not answer in time."""

    def __init__(self, message: str, *, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone


def _call(url: str, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
    import http.client
    import json

    from llmctl.supervisor.health import _host_port

    host, port = _host_port(url)
    conn = http.client.HTTPConnection(host, port, timeout=max(0.05, timeout))
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    except TimeoutError:
        raise SlotError(f"no answer within {timeout:.1f} s") from None
    except (OSError, http.client.HTTPException) as err:
        raise SlotError(f"the server went away ({type(err).__name__}: {err})", gone=True) from None
    finally:
        conn.close()
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = None
    if resp.status != 200:
        message = raw[:200].decode(errors="replace")
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            message = str(payload["error"].get("message", message))
        raise SlotError(f"HTTP {resp.status}: {message}")
    return payload


def slot_tokens(url: str, timeout: float) -> list[SlotTokens]:
    """GET /slots: each slot and the tokens its cache holds (n_prompt_tokens, absent when unused)."""
    data = _call(url, "GET", "/slots", None, timeout)
    if not isinstance(data, list):
        raise SlotError("GET /slots did not answer a list")
    out = []
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("id"), int):
            out.append(
                SlotTokens(
                    item["id"],
                    int(item.get("n_prompt_tokens") or 0),
                    bool(item.get("is_processing")),
                )
            )
    return out


def save_slot(url: str, slot: int, filename: str, timeout: float) -> tuple[int, int]:
    """Save `slot` to `filename`: (bytes written, tokens saved), as llama-server reports them."""
    answer = _call(url, "POST", f"/slots/{slot}?action=save", {"filename": filename}, timeout)
    try:
        return int(answer["n_written"]), int(answer["n_saved"])
    except (KeyError, TypeError, ValueError) as err:
        raise SlotError(f"unexpected answer to a save: {err!r}") from None


def restore_slot(url: str, slot: int, filename: str, timeout: float) -> int | None:
    """Restore `slot` from `filename`: the tokens restored (None when the answer does not say)."""
    answer = _call(url, "POST", f"/slots/{slot}?action=restore", {"filename": filename}, timeout)
    n = answer.get("n_restored") if isinstance(answer, dict) else None
    return n if isinstance(n, int) else None
