"""What formats that open their calls with a marker share: content before it, calls after it."""

from __future__ import annotations

from sgl.api.tool_calls.base import CallDraft, Scan, ToolCallParser, held_prefix


class MarkerParser(ToolCallParser):
    """Content is the text before ``marker`` (a tail that may become the marker is held back while streaming)."""

    marker: str = ""

    def read_calls(self, text: str, start: int) -> list[CallDraft]:
        """The calls written from ``start`` (just past the marker) on."""
        raise NotImplementedError

    def scan(self, text: str, final: bool) -> Scan:
        at = text.find(self.marker)
        if at < 0:
            if final:
                return Scan(text)
            return Scan(text[: len(text) - held_prefix(text, self.marker)])
        found = Scan(text[:at], self.read_calls(text, at + len(self.marker)))
        return self.finish(found, text) if final else found
