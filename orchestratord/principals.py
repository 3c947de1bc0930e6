"""Who is asking: the principal an API key names — a tenant, roles, per-key limits.

Roles (README, "Keys and roles"):

- `read` — the key's own tasks, streams, sessions, batches and files; pools and models.
- `submit` — `read`, and submitting: tasks, the OpenAI routes, files and batches;
  cancelling its own.
- `operator` — every tenant's tasks (read and cancel), and the pools' verbs: drain,
  resume, reload.
- `admin` — everything, keys included.

Operators and admins see every tenant; everyone else sees only their own tenant's work,
and another tenant's ids answer as if they did not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from orchestratord.api_models import KeyLimits as Limits
from orchestratord.api_models import KeyRole as Role

__all__ = ["Limits", "Principal", "Role", "granted", "open_principal"]


#: What each role grants beyond itself.
_IMPLIES: dict[Role, frozenset[Role]] = {
    Role.READ: frozenset(),
    Role.SUBMIT: frozenset({Role.READ}),
    Role.OPERATOR: frozenset({Role.READ}),
    Role.ADMIN: frozenset(Role),
}


def granted(roles: frozenset[Role]) -> frozenset[Role]:
    """The roles a key holds, with what each implies."""
    out = set(roles)
    for role in roles:
        out |= _IMPLIES[role]
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller (or, with no keys configured, anyone on loopback)."""

    tenant: str
    roles: frozenset[Role]
    #: The key's id (never the key); None when keys are off.
    key_id: str | None = None
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", granted(self.roles))

    def may(self, role: Role) -> bool:
        return role in self.roles

    @property
    def sees_all(self) -> bool:
        """Operators and admins see (and may cancel) every tenant's work."""
        return Role.OPERATOR in self.roles

    def owns(self, tenant: str) -> bool:
        """Whether work of `tenant` is visible to this principal."""
        return self.sees_all or tenant == self.tenant

    @property
    def who(self) -> str:
        """How the audit log names this principal: its key id, never the key."""
        return self.key_id or "anonymous"


@lru_cache(maxsize=1024)  # per request on the hot path: made once per tenant
def open_principal(tenant: str) -> Principal:
    """With no keys configured (loopback only): every role, the tenant `X-Tenant-Id` names."""
    return Principal(tenant=tenant, roles=frozenset({Role.ADMIN}))
