from deploy.render import main

raise SystemExit(main())
