-- 0003: the OAuth token store (taptouch_resource/token_store.py), outside the analysts' schemas.
-- Tokens are Fernet ciphertexts (bytea): reading the table with SQL never shows a usable token.
create schema if not exists taptouch_auth;
revoke all on schema taptouch_auth from public;

create table if not exists taptouch_auth.tokens (
    token_id            bigint generated always as identity primary key,
    base_url            text not null,
    client_id           text not null,
    grant_type          text not null check (grant_type in ('client_credentials', 'authorization_code')),
    -- authorization_code: the merchant's label (taptouch-sync authorize --merchant LABEL);
    -- client_credentials: the requested scopes, sorted and space-separated.
    label               text not null,
    scopes              text[] not null,
    access_token        bytea not null,
    access_issued_at    timestamptz not null,
    access_expires_at   timestamptz not null,
    refresh_token       bytea,
    refresh_expires_at  timestamptz,
    store_ids           bigint[] not null default '{}',
    rotations           integer not null default 0,
    last_error          text,
    authorized_at       timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    unique (base_url, client_id, grant_type, label)
);
