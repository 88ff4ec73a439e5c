-- The audit log, the same record format in every service database: who did what to which object, when, from which
-- certificate, and how it ended. Append-only: the trigger below refuses every update and delete, so a record can
-- only be added. (A later step chains the records by hash so that tampering by the database owner shows too.)
create table kit_audit (
    -- The per-service sequence: gap-free ordering within one database.
    seq                bigint generated always as identity primary key,
    at                 timestamptz not null default now(),
    -- The account, API client or "anonymous"; never an ID number in clear.
    actor              text        not null,
    -- public, unit_operator, agency_reviewer, ca_operator, province_admin, security_admin, audit_admin, system.
    role               text        not null,
    -- The serial of the client certificate the request came with, when there was one.
    certificate_serial text,
    remote_address     text,
    -- What was attempted, e.g. key_application.apply, registry.import.
    action             text        not null,
    -- What it was done to, e.g. key_application:SQ20261203000001.
    object             text        not null,
    -- success, refused, or failed.
    outcome            text        not null check (outcome in ('success', 'refused', 'failed')),
    -- What changed or why it was refused; masked values only.
    detail             jsonb       not null default '{}'::jsonb,
    trace_id           text
);

create function kit_audit_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'the audit log is append-only: % is not allowed', tg_op;
end;
$$;

create trigger kit_audit_append_only
    before update or delete or truncate on kit_audit
    for each statement execute function kit_audit_append_only();
