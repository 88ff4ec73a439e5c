-- Row-level security: a transaction sees and writes only the units of its scope (kit_scope_allows), on top of the
-- filter every query carries: an operator's own unit, a reviewer's agency's units, every unit for the province
-- admin and the platform's own work. Forced, so the table's owner is held to it too.
alter table units enable row level security;
alter table units force row level security;
create policy units_within_scope on units
    using (kit_scope_allows(institution_code) or agency_code = any (string_to_array(nullif(current_setting('pension.agencies', true), ''), ',')))
    with check (kit_scope_allows(institution_code));
