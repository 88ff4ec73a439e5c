-- Declarations (申报) and the agency's review (domain section 6): a unit's declaration goes
-- declaring → declared → withdrawn | claimed → approved | rejected, or declaring → abandoned when the roster could not
-- be frozen. The unit's own state follows its active declaration: draft while none is active.

alter table units drop constraint units_state_check;
alter table units add constraint units_state_check
    check (state in ('draft', 'declaring', 'declared', 'under_review', 'approved'));
-- 单位编号, given once on the first approval and kept.
alter table units add column unit_number text unique;

-- Unit numbers: the unit's region code and a province-wide sequence.
create sequence unit_numbers;

create table declarations (
    declaration_id   uuid primary key,
    institution_code text        not null references units,
    agency_code      text        not null,
    state            text        not null
                     check (state in ('declaring', 'declared', 'withdrawn', 'claimed', 'approved', 'rejected', 'abandoned')),
    created_at       timestamptz not null default now(),
    created_by       text        not null,
    declared_at      timestamptz,
    claimed_by       text,
    reason           text check (char_length(reason) <= 200),
    unit_number      text,
    -- The unit record as declared: a UnitRecord's encoding, base64, sealed (kit::sealing) because it holds the bank
    -- account; its SHA-256 in hex beside it, and the roster's as personnel computed it.
    unit_snapshot    bytea,
    key_version      integer,
    unit_digest      text,
    roster_digest    text,
    -- The warnings of the record the unit accepted, as they stood: [{code, accepted_by, accepted_at}].
    accepted_warnings jsonb      not null default '[]',
    staff_count               integer not null default 0,
    retiree_pre_reform_count  integer not null default 0,
    retiree_post_reform_count integer not null default 0
);

-- One active declaration per unit: two declares racing cannot both start one.
create unique index declarations_one_active on declarations (institution_code)
    where state in ('declaring', 'declared', 'claimed');
-- The reviewer's queue, oldest first; the reconciler's sweep of unsettled declarations.
create index declarations_queue on declarations (agency_code, declared_at) where state in ('declared', 'claimed');
create index declarations_declaring on declarations (created_at) where state = 'declaring';
create index declarations_of_unit on declarations (institution_code, created_at);

-- Every transition, with who, when, why and the snapshot it refers to. Append-only.
create table declaration_transitions (
    seq              bigserial primary key,
    declaration_id   uuid        not null references declarations,
    institution_code text        not null,
    agency_code      text        not null,
    from_state       text,
    to_state         text        not null,
    actor            text        not null,
    role             text        not null,
    reason           text,
    unit_digest      text,
    roster_digest    text,
    at               timestamptz not null default now()
);

create index declaration_transitions_of on declaration_transitions (declaration_id, seq);

create function declaration_transitions_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'declaration_transitions is append-only';
end
$$;

create trigger declaration_transitions_append_only before update or delete on declaration_transitions
    for each row execute function declaration_transitions_append_only();

-- Row-level security as for units: the transaction's units, or the units of a reviewer's agencies.
alter table declarations enable row level security;
alter table declarations force row level security;
create policy declarations_within_scope on declarations
    using (kit_scope_allows(institution_code) or agency_code = any (string_to_array(nullif(current_setting('pension.agencies', true), ''), ',')))
    with check (kit_scope_allows(institution_code) or agency_code = any (string_to_array(nullif(current_setting('pension.agencies', true), ''), ',')));

alter table declaration_transitions enable row level security;
alter table declaration_transitions force row level security;
create policy declaration_transitions_within_scope on declaration_transitions
    using (kit_scope_allows(institution_code) or agency_code = any (string_to_array(nullif(current_setting('pension.agencies', true), ''), ',')))
    with check (kit_scope_allows(institution_code) or agency_code = any (string_to_array(nullif(current_setting('pension.agencies', true), ''), ',')));

-- A reviewer's transactions (scope: its agencies) write the state of its agency's units, as they read them.
drop policy units_within_scope on units;
create policy units_within_scope on units
    using (kit_scope_allows(institution_code) or agency_code = any (string_to_array(nullif(current_setting('pension.agencies', true), ''), ',')))
    with check (kit_scope_allows(institution_code) or agency_code = any (string_to_array(nullif(current_setting('pension.agencies', true), ''), ',')));
