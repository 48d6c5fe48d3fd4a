-- anneal catalog: a training job's latest validation image (image models render fixed
-- prompts every N steps; dashboards show it as the "current image"), relative to the home.
ALTER TABLE jobs ADD COLUMN image TEXT;
