from load.cli import main

raise SystemExit(main())
