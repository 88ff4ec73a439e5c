-- Kit's tables, present in every service database (recorded in _kit_migrations, apart from the service's own).

-- The transactional outbox: a service inserts its event here in the same transaction as the change it describes,
-- so an event exists if and only if the change committed. The relay publishes unpublished rows to JetStream with
-- Nats-Msg-Id = id and sets published_at only after JetStream acknowledged them.
create table kit_outbox (
    -- UUID v7: unique, and roughly in commit order, which the relay uses to publish oldest first.
    id           uuid primary key,
    -- The full NATS subject, namespace included, e.g. pension.events.units.declared.
    subject      text        not null,
    -- The encoded protobuf event.
    payload      bytea       not null,
    created_at   timestamptz not null default now(),
    -- Null until JetStream acknowledged the event. Published rows are pruned after a retention period.
    published_at timestamptz
);

-- The relay's work list: only unpublished rows, so it stays small however long the history.
create index kit_outbox_unpublished on kit_outbox (id) where published_at is null;
create index kit_outbox_published_at on kit_outbox (published_at) where published_at is not null;

-- The inbox of idempotent consumers: one row per (consumer, event) handled, written in the same transaction as the
-- handler's effect, so a redelivered event finds its row and is acknowledged without being applied again.
create table kit_inbox (
    consumer   text        not null,
    -- The event's Nats-Msg-Id (the producer's outbox id).
    message_id text        not null,
    handled_at timestamptz not null default now(),
    primary key (consumer, message_id)
);
