"""Every modelled detail of the Taptouch API protocol in one place.

Every path, query parameter, envelope and error field, page size and id field the client relies on
lives here ([doc]: documented by Taptouch; [model]: modelled), so meeting the real API means editing
this file, not the client. The record shapes, and the rules a record must meet to become warehouse
rows, belong to the warehouse's record boundary (``pipelines.warehouse.records``), which raises
:class:`InvalidRecord`. What is documented and what is modelled: docs/api-model.md.
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------------
# Endpoints and OAuth [doc]
DEFAULT_BASE_URL = "https://api.taptouch.net"
TOKEN_PATH = "/auth/v2/token"
AUTHORIZE_PATH = "/auth/v2/authorize"

SCOPE_STORE = "integration.store"
SCOPE_ORDER = "integration.order"
SCOPE_INVENTORY = "integration.inventory"
ALL_SCOPES: tuple[str, ...] = (SCOPE_STORE, SCOPE_ORDER, SCOPE_INVENTORY)

# Integration endpoints: store path [doc], order and inventory paths [model]
STORES_PATH = "/integration/v1/stores"
ORDERS_PATH = "/integration/v1/stores/{store_id}/orders"
INVENTORY_PATH = "/integration/v1/stores/{store_id}/inventory"

# Pagination [doc]: index is a page number [model], count the page size (max 500 [model]).
PARAM_INDEX = "index"
PARAM_COUNT = "count"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500

# Pagination hints [not in the contract]: fields some servers add to a list answer (top level, in
# ``status``, or in one of the containers). The client never pages by them; it only refuses a short
# last page that one of them contradicts ("more follows").
PAGINATION_MORE_FIELDS = ("has_more", "hasMore", "more")
PAGINATION_CONTAINERS = ("pagination", "paging", "meta")

# Order and inventory filters [model]
PARAM_UPDATED_FROM = "updated_from"
PARAM_UPDATED_TO = "updated_to"
PARAM_STATUS = "status"

# Envelope [doc]
ENVELOPE_STATUS = "status"
ENVELOPE_DATA = "data"
ENVELOPE_ACK = "ack"
ENVELOPE_ERRORS = "errors"
ENVELOPE_TIMESTAMP = "timestamp"
ERROR_CODE = "code"
ERROR_MESSAGE = "message"
ERROR_PARAMETER = "parameter"
ERROR_STORE_FORBIDDEN = "store_forbidden"

# Record identity: the field that identifies a record of each list [model]
STORE_ID_FIELD = "id"
ORDER_ID_FIELD = "id"
ORDER_UPDATED_FIELD = "updated_at"
INVENTORY_ID_FIELD = "product_id"

# Order statuses [model] and which of them are sales (used by checks and analytics).
STATUS_OPEN = "open"
STATUS_COMPLETED = "completed"
SALE_STATUSES = ("completed", "partially_refunded", "refunded")


# --------------------------------------------------------------------------------------------
class InvalidRecord(ValueError):
    """A record that cannot be loaded as sent. ``reason`` says what is wrong, for a person."""

    def __init__(self, reason: str, *, record_key: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.record_key = record_key
