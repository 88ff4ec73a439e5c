-- One insured unit per person, province-wide, and each unit's people visible to that unit alone.

-- A registration ends when the person leaves the unit for good; an ended registration no longer counts against the
-- rule below. Until then it is active.
alter table persons add column ended_at timestamptz;

-- The rule itself: one active registration per ID number (the keyed HMAC of type and number). Two units saving the
-- same person at the same moment cannot both succeed, whatever each saw when it checked.
drop index persons_hmac;
create unique index persons_one_active_registration on persons (id_number_hmac) where ended_at is null;

-- Which agency handles each unit, from identity's unit_first_login events: a conflict names whom to contact.
create table unit_agencies (
    institution_code text primary key,
    agency_code      text not null,
    agency_name      text not null default ''
);

-- Whether an ID number is registered, and where to turn, without showing the other unit: the caller's unit or
-- not, and the agency of the unit that holds it. Security definer, so it sees past the policies below; it answers
-- nothing else.
create function active_registration(hmac bytea, caller_unit text, excluding uuid)
returns table (in_caller_unit boolean, agency_code text, agency_name text)
language sql stable security definer set search_path = public as $$
    select p.institution_code = caller_unit, coalesce(a.agency_code, ''), coalesce(a.agency_name, '')
    from persons p left join unit_agencies a on a.institution_code = p.institution_code
    where p.id_number_hmac = hmac and p.ended_at is null
        -- Only a person of the caller's own unit can be the one being edited.
        and (excluding is null or p.person_id <> excluding or p.institution_code <> caller_unit)
    order by p.institution_code = caller_unit desc
    limit 1
$$;

-- Row-level security: a transaction sees and writes only the units of its scope (kit_scope_allows), on top of the
-- unit filter every query carries. Forced, so the tables' owner is held to it too.
alter table persons enable row level security;
alter table persons force row level security;
create policy persons_within_scope on persons
    using (kit_scope_allows(institution_code)) with check (kit_scope_allows(institution_code));

alter table roster_locks enable row level security;
alter table roster_locks force row level security;
create policy roster_locks_within_scope on roster_locks
    using (kit_scope_allows(institution_code)) with check (kit_scope_allows(institution_code));
