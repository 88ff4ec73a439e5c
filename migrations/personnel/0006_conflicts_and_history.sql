-- Stale registrations: a unit saving a person insured elsewhere is told which agency to contact, and that agency's
-- reviewer sees the conflict here and may end the stale registration. And each person's registrations across units.

create table registration_conflicts (
    conflict_id      uuid primary key,
    id_number_hmac   bytea       not null,
    id_number_masked text        not null,
    name             text        not null,
    -- The unit that tried to register the person, and the registration that stands in its way.
    requesting_unit  text        not null,
    holding_person   uuid        not null,
    holding_unit     text        not null,
    holding_agency   text        not null,
    created_at       timestamptz not null default now(),
    resolved_at      timestamptz,
    resolved_by      text,
    resolution       text
);

-- One open conflict per person and requesting unit, however often the unit checks again.
create unique index registration_conflicts_open on registration_conflicts (id_number_hmac, requesting_unit)
    where resolved_at is null;

-- A reviewer sees the conflicts its agency must settle; the platform's own work sees all.
alter table registration_conflicts enable row level security;
alter table registration_conflicts force row level security;
create policy registration_conflicts_of_agency on registration_conflicts
    using (kit_scope_allows(holding_unit)
        or holding_agency = any (string_to_array(nullif(current_setting('pension.agencies', true), ''), ',')))
    with check (kit_scope_allows(holding_unit)
        or holding_agency = any (string_to_array(nullif(current_setting('pension.agencies', true), ''), ',')));

-- Records the conflict of a unit's attempt, seeing past the policies as active_registration does; nothing is
-- answered to the caller.
create function record_registration_conflict(hmac bytea, caller_unit text, masked text, person_name text)
returns void language sql volatile security definer set search_path = public as $$
    insert into registration_conflicts (conflict_id, id_number_hmac, id_number_masked, name, requesting_unit,
        holding_person, holding_unit, holding_agency)
    select gen_random_uuid(), hmac, masked, person_name, caller_unit, p.person_id, p.institution_code,
        coalesce(a.agency_code, '')
    from persons p left join unit_agencies a on a.institution_code = p.institution_code
    where p.id_number_hmac = hmac and p.ended_at is null and p.institution_code <> caller_unit
    limit 1
    on conflict do nothing
$$;

-- Who was registered where, when, and by whose act. Append-only.
create table person_history (
    seq              bigserial primary key,
    id_number_hmac   bytea       not null,
    person_id        uuid        not null,
    institution_code text        not null,
    event            text        not null check (event in ('registered', 'ended')),
    actor            text        not null,
    reason           text,
    at               timestamptz not null default now()
);

create index person_history_of on person_history (id_number_hmac, seq);

create function person_history_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'person_history is append-only';
end
$$;

create trigger person_history_append_only before update or delete on person_history
    for each row execute function person_history_append_only();

alter table persons add column end_reason text;
