"""Pure decisions: live facts in, a verdict with reason and message out."""
