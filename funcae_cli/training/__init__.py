"""Training: the data on the device (prepared), the loop (loop), its step engines (engines: which runs when;
steps and native/ for the hand-written ones), optimizers, schedules, losses, and evaluation."""
