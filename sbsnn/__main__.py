from sbsnn.cli import main

raise SystemExit(main())
