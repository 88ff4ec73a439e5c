-- The unit's region (所属行政区划) beside its agency, from the same first-login event, so that the counts of people
-- registered that personnel announces can be summed by region without waiting for another service's event. Units
-- that logged in before this step count under their agency only until their next first-login event.
alter table unit_agencies add column region_code text not null default '';
