-- Creates a client may retry: the client's Idempotency-Key, a digest of what it asked, and the first answer, all
-- written in the create's own transaction. A retry with the same key and body gets the first answer; the same key
-- with another body is refused. A second call with a key still in flight waits for the first on the primary key.
create table idempotency_keys (
    institution_code text        not null,
    key              text        not null,
    request_digest   bytea       not null,
    -- The encoded reply (pension.personnel.v1.PersonReply).
    response         bytea       not null,
    created_at       timestamptz not null default now(),
    primary key (institution_code, key)
);

-- Kept a day: long enough for any retry, short enough to stay small.
create index idempotency_keys_age on idempotency_keys (created_at);

alter table idempotency_keys enable row level security;
alter table idempotency_keys force row level security;
create policy idempotency_keys_within_scope on idempotency_keys
    using (kit_scope_allows(institution_code)) with check (kit_scope_allows(institution_code));
