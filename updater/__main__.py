from updater.cli import main

# Guarded: worker processes started with forkserver or spawn import the main module again.
if __name__ == "__main__":
    raise SystemExit(main())
