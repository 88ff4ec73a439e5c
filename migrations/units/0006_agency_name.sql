-- The handling agency's name (所属经办机构), as identity's first-login event carries it: the printed unit form names
-- the agency, not only its code.
alter table units add column agency_name text not null default '';
