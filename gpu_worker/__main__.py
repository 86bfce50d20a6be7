from gpu_worker.main import main

raise SystemExit(main())
