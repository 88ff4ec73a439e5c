-- API clients: the systems of other agencies (finance, the establishment office, tax, public security) calling the
-- agency API on the gateway's port 50443, each with the scopes the province admin granted it.
create table api_clients (
    -- The client's name and its actor in the audit log: lower-case letters, digits and '-'.
    client_id        text primary key check (client_id ~ '^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$'),
    display_name     text        not null check (char_length(display_name) between 1 and 100),
    scopes           text[]      not null default '{}'
                     check (scopes <@ array['persons:read', 'units:read', 'events:read', 'registry:write']),
    -- disabled: every call refused, certificates kept.
    state            text        not null default 'active' check (state in ('active', 'disabled')),
    calls_per_minute integer     not null default 600 check (calls_per_minute between 1 and 100000),
    created_at       timestamptz not null default now(),
    created_by       text        not null,
    updated_at       timestamptz not null default now(),
    updated_by       text        not null
);

-- The certificates a client authenticates with: issued by the platform's CA here, or by a configured agency CA and
-- registered here. A presented certificate is found by its fingerprint, so serials of different CAs never mix.
create table api_client_certificates (
    fingerprint       bytea primary key,
    client_id         text        not null references api_clients (client_id),
    serial            text        not null,
    origin            text        not null check (origin in ('platform', 'agency_ca')),
    subject           text        not null,
    not_before        timestamptz not null,
    not_after         timestamptz not null,
    pem               text        not null,
    state             text        not null default 'active' check (state in ('active', 'revoked')),
    revoked_at        timestamptz,
    revocation_reason text,
    added_at          timestamptz not null default now(),
    added_by          text        not null,
    check ((state = 'active') = (revoked_at is null))
);

create index api_client_certificates_client on api_client_certificates (client_id, added_at desc);
-- The platform's own serials are unique across its accounts' and clients' certificates alike (one CRL lists both).
create unique index api_client_certificates_platform_serial on api_client_certificates (serial)
    where origin = 'platform';

-- A registry entry the establishment office retired (撤销): kept for the units already enrolled, matched by nothing.
alter table registry_entries add column retired_at timestamptz;
alter table registry_entries add column retired_reason text check (char_length(retired_reason) <= 200);
