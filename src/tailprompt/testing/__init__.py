"""Test and benchmark support that ships with the package: miniature dataset trees in the real layouts."""
