"""A user model whose users map to Dodo customers (the middleware's default customer)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """A user billed as ``dodo_customer_id`` (blank: not a Dodo customer)."""

    dodo_customer_id = models.CharField(max_length=64, blank=True, default="")
