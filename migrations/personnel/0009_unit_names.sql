-- The unit's name beside its agency (from the same first-login event), so that an agency asking where a person is
-- enrolled learns the unit's name without a second call. Units that logged in before this step show their
-- institution code alone until their next first-login event.
alter table unit_agencies add column unit_name text not null default '';
