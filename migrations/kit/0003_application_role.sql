-- The application role. Services run their queries as `pension_app` (kit::db sets it on every pooled connection),
-- never as the user that owns the tables, so row-level security applies to every query a service makes; migrations
-- alone run as the owner. The role is cluster-wide and made once: every service database, and two of them migrating
-- at the same moment, may find it made already. A deployment whose login user is not a superuser grants it the
-- role once: `grant pension_app to <login user>`.
do $$
begin
    create role pension_app nologin;
exception
    when duplicate_object or unique_violation then null;
end
$$;

grant usage on schema public to pension_app;
grant select, insert, update, delete on all tables in schema public to pension_app;
grant usage, select on all sequences in schema public to pension_app;
-- Tables and sequences of later migrations, made by the same owner, are granted as they are made.
alter default privileges in schema public grant select, insert, update, delete on tables to pension_app;
alter default privileges in schema public grant usage, select on sequences to pension_app;

-- The scope a transaction was given (kit::db::set_scope): every unit, or a list of institution codes. Policies of
-- the services' tables ask this; a transaction that set nothing is allowed nothing.
create function kit_scope_allows(institution_code text) returns boolean
language sql stable as $$
    select coalesce(current_setting('pension.scope', true), '') = 'all'
        or institution_code = any (string_to_array(nullif(current_setting('pension.units', true), ''), ','))
$$;
