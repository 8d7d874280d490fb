from hookshield.cli import main

raise SystemExit(main())
