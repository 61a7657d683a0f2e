"""Keeping merchant grants alive: a merchant's refresh token is single use and valid for 4 days, so
``merchant_tokens_keepalive_job`` (scheduled daily by ``merchant_tokens_keepalive``) rotates every
stored merchant grant whose refresh token has less than 3 days left, whether or not syncs run."""

import functools

import dagster as dg

from pipelines.authorize import keep_merchants_alive
from pipelines.warehouse.token_store import TokenStore
from taptouch_resource import TaptouchResource

from . import settings
from .accounts import DEFAULT, Account
from .warehouse.resource import PostgresResource


@functools.cache  # one job per account, whoever asks for it
def keepalive_job(account: Account = DEFAULT) -> dg.JobDefinition:
    """The keep-alive job of one account's client id (``<name>_merchant_tokens_keepalive_job``)."""
    resource_key = account.resource_key

    @dg.op(
        name=account.named("refresh_merchant_tokens"),
        required_resource_keys={resource_key, "warehouse"},
        description="Refresh stored merchant tokens whose refresh token has less than 3 days left.",
    )
    def refresh_merchant_tokens(context: dg.OpExecutionContext) -> dg.Output[int]:
        taptouch: TaptouchResource = getattr(context.resources, resource_key)
        warehouse: PostgresResource = context.resources.warehouse
        warehouse.ensure_migrated()
        if not account.is_default:  # the account's TAPTOUCH_<NAME>_* fill what the resource leaves unset
            taptouch = settings.for_run(taptouch, warehouse, account)[0]
        client_id, secret, base_url = taptouch.resolved()
        store = TokenStore.for_client(
            warehouse.url(), client_id, secret, account=None if account.is_default else account.name
        )
        results = keep_merchants_alive(store, base_url=base_url, client_id=client_id, client_secret=secret)
        for r in results:  # every grant is tried; each failure is reported, then the step fails
            if r.error:
                context.log.error(f"merchant {r.merchant}: FAILED: {r.error}")
            else:
                context.log.info(f"merchant {r.merchant}: {'rotated' if r.rotated else 'still fresh'}")
        failed = [r for r in results if r.error]
        if failed:
            raise dg.Failure(
                description="\n".join(f"merchant {r.merchant}: {r.error}" for r in failed),
                allow_retries=False,
                metadata={
                    "merchants": len(results),
                    "failed": len(failed),
                    "failed_merchants": ", ".join(r.merchant for r in failed),
                    "rotated": sum(r.rotated for r in results),
                },
            )
        return dg.Output(
            sum(r.rotated for r in results),
            metadata={"merchants": len(results), "rotated": sum(r.rotated for r in results)},
        )

    @dg.job(
        name=account.named("merchant_tokens_keepalive_job"),
        description="Rotate merchant refresh tokens well inside their 4-day validity.",
    )
    def _job():
        refresh_merchant_tokens()

    return _job


# The single-account job (unprefixed names): the factory with no prefix.
merchant_tokens_keepalive_job = keepalive_job(DEFAULT)
refresh_merchant_tokens = merchant_tokens_keepalive_job.graph.node_defs[0]
